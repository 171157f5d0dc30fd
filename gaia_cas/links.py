"""The ``current`` links: symlinks regenerated from the manifest, swapped atomically.

A directory artifact's link points at its materialized tree; a file artifact's link points at
the file inside it, so a loader opening ``current`` finds ``model_catboost_best.joblib`` by its
real name. Targets are relative, so a root can be moved or mounted elsewhere as a whole.
"""

from __future__ import annotations

import os
from pathlib import Path

from .atomic import fsync_dir, replace_symlink
from .errors import InvalidInputError
from .layout import Layout


def model_links(layout: Layout, manifest) -> dict[str, str]:
    """Every link a model owns: 'current' and each channel -> its path relative to the root."""
    result = {"current": manifest.config.link or layout.default_link(manifest.model)}
    for name, channel in sorted(manifest.channels.items()):
        result[name] = channel["link"] or f"models/{manifest.model}/{name}"
    return result


def inside_root(layout: Layout, path: Path) -> bool:
    """Whether ``path``, with every symlink on the way resolved, is the root or inside it."""
    real, real_root = os.path.realpath(path), os.path.realpath(layout.root)
    return real == real_root or real.startswith(real_root + os.sep)


def check_location(layout: Layout, relative: str) -> Path:
    """Validate a link location without creating anything; returns the link's path."""
    link = layout.link_path(relative)
    # The folders on the way may themselves be symlinks: refuse any that lead out of the root,
    # and check before creating a single folder.
    existing = link.parent
    while not os.path.lexists(existing):
        existing = existing.parent
    if not inside_root(layout, existing):
        raise InvalidInputError(f"link path {relative!r} leads outside the root (through a symlink)")
    if os.path.lexists(link) and not os.path.islink(link):
        raise InvalidInputError(
            f"{link} exists and is not a symlink; move it away so gaia-cas can manage the link there"
        )
    return link


def point_link(layout: Layout, relative: str, target: Path) -> bool:
    """Make the link at ``relative`` point at ``target``. Returns whether it changed."""
    link = check_location(layout, relative)
    link.parent.mkdir(parents=True, exist_ok=True)
    wanted = os.path.relpath(target, link.parent)
    try:
        if os.readlink(link) == wanted:
            return False
    except OSError:
        pass
    replace_symlink(link, wanted)
    return True


def drop_link(layout: Layout, relative: str) -> bool:
    """Remove a link gaia-cas made: one inside the root that points into its store.

    A symlink already at the location before the model existed (a legacy ``current`` that
    servers still follow) is left alone until a version replaces it.
    """
    link = layout.link_path(relative)
    if not os.path.islink(link) or not inside_root(layout, link.parent):
        return False
    target = os.path.normpath(os.path.join(link.parent, os.readlink(link)))
    store = os.path.normpath(layout.trees)
    if not (target == store or target.startswith(store + os.sep)):
        return False
    os.unlink(link)
    fsync_dir(link.parent)
    return True


def read_link(layout: Layout, relative: str) -> Path | None:
    """Where the link points now (absolute, not resolved further), or None if absent."""
    link = layout.link_path(relative)
    try:
        return Path(os.path.normpath(link.parent / os.readlink(link)))
    except OSError:
        return None
