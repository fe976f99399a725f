"""duetmc's web app: a search page over an index and the paper's listening study (§5.2).

`segments` decodes and encodes a clip's audio segment, `http` holds what both apps share (JSON
errors, package pages, byte ranges, the server), `search_app` and `study_app` are the two ASGI apps.
"""
