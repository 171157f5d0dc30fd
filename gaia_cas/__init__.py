"""gaia-cas: versioned ML model deployment on a content-addressed store.

The package root stays light (the CLI imports it on every start); the library API is reached
through the names below, each imported on first use -- and listed by ``dir(gaia_cas)``, so
completion in a shell or an editor offers them before they are loaded::

    import gaia_cas

    active = gaia_cas.resolve("ssd")               # what a server loads: path, version, hash
    pinned = gaia_cas.resolve("ssd", version="1.4")
    repo = gaia_cas.Repository.open("/srv/models")  # everything the CLI does
"""

from .errors import GaiaCasError

__version__ = "0.1.0"

__all__ = ["GaiaCasError", "ModelHandle", "Repository", "Resolved", "resolve"]

_LAZY = {"Repository": "repo", "ModelHandle": "handle", "resolve": "reader", "Resolved": "reader"}


def __getattr__(name):
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # found directly from now on
        return value
    raise AttributeError(f"module 'gaia_cas' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
