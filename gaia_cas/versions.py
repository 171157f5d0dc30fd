"""Semantic version numbers and the selectors users type to name a version.

Selectors accepted wherever a version is named (rollback, show, ...):

    1.4.0  1.4  v1.4  v1.4.0              the version number (a missing patch means .0)
    v1.4_20250716_202612                  number plus deployment id, as the old layout named folders
    3f9a1c0e...                           a unique prefix (8+ hex digits) of the version's tree oid
    previous                              the version that was current before the current one
"""

from __future__ import annotations

import re
from collections import namedtuple

from .errors import InvalidInputError

_VERSION_RE = re.compile(r"v?(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})(?:\.(0|[1-9]\d{0,8}))?")
_SELECTOR_RE = re.compile(_VERSION_RE.pattern + r"(?:_(\d{8}_\d{6}))?")
_OID_PREFIX_RE = re.compile(r"[0-9a-f]{8,32}")
BUMPS = ("major", "minor", "patch")
FIRST = (1, 0, 0)


def parse_version(text: str) -> tuple[int, int, int]:
    """Parse ``X.Y.Z`` (``v`` prefix and missing patch allowed) into a tuple."""
    match = _VERSION_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if not match:
        raise InvalidInputError(f"malformed version {text!r}: expected X.Y.Z, e.g. 1.4.0")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def format_version(parts: tuple[int, int, int]) -> str:
    return "%d.%d.%d" % parts


def bump(highest: str | None, kind: str = "minor") -> str:
    if highest is None:
        return format_version(FIRST)
    major, minor, patch = parse_version(highest)
    if kind == "major":
        return format_version((major + 1, 0, 0))
    if kind == "minor":
        return format_version((major, minor + 1, 0))
    if kind == "patch":
        return format_version((major, minor, patch + 1))
    raise InvalidInputError(f"unknown bump {kind!r}: use one of {', '.join(BUMPS)}")


def version_key(text: str) -> tuple[int, int, int]:
    return parse_version(text)


# kind: "version", "oid" or "previous"
Selector = namedtuple("Selector", "kind version deployment_id oid_prefix", defaults=(None, None, None))


def parse_selector(text: str) -> Selector:
    text = text.strip() if isinstance(text, str) else ""
    if text == "previous":
        return Selector("previous")
    match = _SELECTOR_RE.fullmatch(text)
    if match:
        major, minor, patch, deployment_id = match.groups()
        return Selector("version", format_version((int(major), int(minor), int(patch or 0))), deployment_id)
    if _OID_PREFIX_RE.fullmatch(text):
        return Selector("oid", oid_prefix=text)
    raise InvalidInputError(
        f"malformed version {text!r}: expected 1.4.0, 1.4, v1.4, v1.4_YYYYmmdd_HHMMSS, "
        "8+ hex digits of a hash, or 'previous'"
    )
