"""duetmc: music-text retrieval heads trained from cached locked-encoder features."""

__version__ = "0.1.0"

# Public names load on first use, so `import duetmc` (and `duetmc --help`) stays free of torch.
_LAZY = {"DuetModel": "duetmc.pretrained", "Index": "duetmc.index"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'duetmc' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
