"""Selectors: which version of a manifest a user's words name.

``1.4.0``, ``1.4``, ``v1.4``, the old layout's ``v1.4_20250716_202612``, 8 or more hex digits
of the version's tree (naming exactly one version), ``previous`` (the version current before
the current one), or None for current. Parsing lives in :mod:`gaia_cas.versions`; this module
resolves against a manifest.
"""

from __future__ import annotations

from .errors import InvalidInputError, NotFoundError, VersionNotFoundError
from .manifest import Manifest, Version
from .versions import parse_selector, version_key


def select(manifest: Manifest, selector: str | None) -> Version:
    """The version a selector names (see :mod:`gaia_cas.versions`); None means current."""
    model = manifest.model
    if selector is None:
        current = manifest.current_version()
        if current is None:
            raise NotFoundError(f"model '{model}' has no current version yet")
        return current
    sel = parse_selector(selector)
    if sel.kind == "previous":
        version = previous(manifest)
        if version is None:
            raise VersionNotFoundError(model, selector, ": no earlier current version in its history")
        found = manifest.find(version)
        if found is None:
            raise VersionNotFoundError(model, selector, f": {version} was removed by a cleanup")
        return found
    if sel.kind == "oid":
        matches = [v for v in manifest.versions if v.tree.startswith(sel.oid_prefix)]
        if len(matches) > 1:
            # Several versions may share one tree (a forced redeploy, the old layout's
            # duplicate copies): a hash names none of them in particular, so none is guessed.
            same = " (one tree)" if len({v.tree for v in matches}) == 1 else ""
            raise InvalidInputError(f"hash prefix {selector!r} is ambiguous in '{model}': it matches versions "
                                    + ", ".join(v.version for v in matches) + same + "; name the version instead")
        if not matches:
            raise VersionNotFoundError(model, selector)
        return matches[0]
    found = manifest.find(sel.version)
    if found is None and sel.deployment_id is not None:
        found = next((v for v in manifest.versions if v.deployment_id == sel.deployment_id
                      and version_key(v.version)[:2] == version_key(sel.version)[:2]), None)
    if found is None:
        was = sel.version in manifest.assigned()
        raise VersionNotFoundError(model, selector, (": it was removed by a cleanup" if was else "")
                                   + _same_number_hint(manifest, selector, sel))
    if sel.deployment_id is not None and found.deployment_id != sel.deployment_id:
        # The old layout could hold one number twice; import renumbered the later copy to
        # the next free patch. Its old folder name still names it.
        same = [v for v in manifest.versions if v.deployment_id == sel.deployment_id
                and version_key(v.version)[:2] == version_key(sel.version)[:2]]
        if len(same) == 1:
            return same[0]
        raise VersionNotFoundError(model, selector, f" (version {found.version} was deployed at {found.deployment_id})")
    return found


def previous(manifest: Manifest) -> str | None:
    """The version that was current before the current one became current."""
    for event in manifest.events_newest_first():
        if "channel" in event.details:
            continue  # a channel move, not a change of current
        if event.after == manifest.current and event.before != manifest.current:
            return event.before
    return None


def _same_number_hint(manifest: Manifest, selector: str, sel) -> str:
    """For ``v1.3`` / ``1.3`` whose X.Y.0 is gone: the other versions the old layout also called vX.Y.

    The old script could write one number twice (v1.3_20250716_132518, v1.3_20250716_202612);
    import numbered the later copy 1.3.1, so after a cleanup of 1.3.0 ``v1.3`` still has a copy.
    """
    if sel.deployment_id is not None or selector.strip().lstrip("v").count(".") != 1:
        return ""  # a full X.Y.Z, or a folder name: one version was meant
    major_minor = version_key(sel.version)[:2]
    legacy = {e.version: e.details["legacy"] for e in manifest.history
              if e.action == "import" and e.version and isinstance(e.details.get("legacy"), str)}
    others = [v for v in manifest.versions if version_key(v.version)[:2] == major_minor]
    if not others:
        return ""
    named = ", ".join(v.version + (f" (the old layout's {legacy[v.version]})" if v.version in legacy else "")
                      for v in others)
    return f"; {named} {'still exists' if len(others) == 1 else 'still exist'} with the same number"

