"""duetmc: music-text retrieval heads trained from cached locked-encoder features."""

__version__ = "0.1.0"
