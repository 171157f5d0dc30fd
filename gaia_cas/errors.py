"""The one exception hierarchy of gaia-cas.

Everything the library raises on purpose derives from :class:`GaiaCasError`; the CLI turns it
into a single ``gaia-cas: error: ...`` line. Where a builtin exception fits, the error also
subclasses it, so ``except FileNotFoundError`` keeps working for callers who think in those
terms. This module imports nothing from the package: it is the bottom layer.
"""


class GaiaCasError(Exception):
    """Root of every error gaia-cas raises on purpose."""


class InvalidInputError(GaiaCasError, ValueError):
    """A name, version, path or option the user gave is not acceptable."""


class RootNotFoundError(GaiaCasError, FileNotFoundError):
    """No data root (a folder holding ``store/`` and ``manifests/``) could be found."""


class NotFoundError(GaiaCasError, LookupError):
    """A model, version or object that was asked for does not exist."""


class ModelNotFoundError(NotFoundError):
    def __init__(self, model: str, known: list[str] | None = None):
        self.model = model
        hint = f" (known: {', '.join(known)})" if known else " (none registered yet)"
        super().__init__(f"unknown model '{model}'{hint}")


class VersionNotFoundError(NotFoundError):
    def __init__(self, model: str, selector: str, detail: str = ""):
        self.model = model
        self.selector = selector
        super().__init__(f"model '{model}' has no version '{selector}'{detail}")


class SourceError(GaiaCasError):
    """The artifact being deployed cannot be read as a model (missing, unreadable, odd files)."""


class RolledBackContentError(InvalidInputError):
    """A deploy would make current again the content a rollback moved production away from.

    ``version`` is the version that was rolled back from, ``event`` the history event of that
    rollback (who, when, why). ``--force`` deploys it anyway.
    """

    def __init__(self, model: str, version: str, event, message: str):
        self.model = model
        self.version = version
        self.event = event
        super().__init__(message)


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM, SIGHUP): unwinds like Ctrl-C, so every staging
    folder is removed on the way out and the store is left as it was."""

    def __init__(self, signum: int, name: str, committed: bool = False):
        self.signum = signum
        self.name = name
        self.committed = committed  # it arrived while a commit became visible, and waited for it
        super().__init__(name)


class LockTimeoutError(GaiaCasError, TimeoutError):
    def __init__(self, lock_path: str, timeout: float, holder: str = "another gaia-cas process is changing this model"):
        self.lock_path = lock_path
        self.timeout = timeout
        super().__init__(
            f"could not take the lock {lock_path} within {timeout:g} s: "
            f"{holder} (raise --lock-timeout to wait longer)"
        )


class CorruptionError(GaiaCasError):
    """Stored data (manifest, tree or object) does not decode or does not match its hash."""


class GcRefusedError(CorruptionError):
    """gc found something it cannot read (a manifest, a tree, a lease folder) and deleted nothing."""


class StoreError(GaiaCasError, OSError):
    """The store could not be written or read (disk full, permissions, read-only mount)."""
