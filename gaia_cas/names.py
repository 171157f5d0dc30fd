"""Validation of every name that ever becomes part of a path.

Names come from the command line, from manifests, from tree objects and (later) from remotes;
none of them is trusted. Each is checked here before any path is built from it, so a tree entry
``..`` or a model called ``../x`` can never reach outside the root.
"""

from __future__ import annotations

import re

from .errors import CorruptionError, InvalidInputError

RESERVED_MODEL_WORDS = frozenset({"all", "both"})
_MODEL_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_OID_RE = re.compile(r"[0-9a-f]{32}")
MAX_NAME_BYTES = 255


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not _MODEL_RE.fullmatch(name):
        raise InvalidInputError(
            f"invalid model name {name!r}: use lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (at most 64 characters)"
        )
    if name in RESERVED_MODEL_WORDS:
        raise InvalidInputError(f"'{name}' is a reserved word (it means every model), not a model name")
    return name


def is_oid(value) -> bool:
    return isinstance(value, str) and _OID_RE.fullmatch(value) is not None


def check_oid(value, where: str = "object id") -> str:
    if not is_oid(value):
        raise CorruptionError(f"invalid {where} {value!r}: expected 32 lowercase hex digits")
    return value


def entry_name_problem(name) -> str | None:
    """Why ``name`` cannot be one path component inside a tree, or None if it can."""
    if not isinstance(name, str):
        return "is not a string"
    if name in ("", ".", ".."):
        return "is empty, '.' or '..'"
    if "/" in name or "\0" in name:
        return "contains '/' or a NUL byte"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if len(encoded) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None


def check_text(value, what: str):
    """Text that goes into a manifest must be valid UTF-8 (file names may arrive as surrogates)."""
    if value is None:
        return value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            shown = value.encode("utf-8", "backslashreplace").decode("ascii", "replace")
            raise InvalidInputError(f"{what} {shown!r} is not valid UTF-8") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, what)
            check_text(item, what)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_text(item, what)
    return value
