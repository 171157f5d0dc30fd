"""gaia-cas: versioned ML model deployment on a content-addressed store.

The package root stays light (the CLI imports it on every start); the library API is reached
through the names below, each imported on first use.
"""

from .errors import GaiaCasError

__version__ = "0.1.0"

__all__ = ["GaiaCasError", "ModelHandle", "Repository", "Resolved", "resolve"]


def __getattr__(name):
    if name == "Repository":
        from .repo import Repository

        return Repository
    if name == "ModelHandle":
        from .handle import ModelHandle

        return ModelHandle
    if name in ("resolve", "Resolved"):
        from . import reader

        return getattr(reader, name)
    raise AttributeError(f"module 'gaia_cas' has no attribute {name!r}")
