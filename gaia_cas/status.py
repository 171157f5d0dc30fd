"""Status: per model, its current version and sizes; for the store, what is on disk and why.

``bytes_on_disk`` = ``used_bytes`` (what versions use) + ``garbage_bytes`` (what no version
uses: gc frees it) + ``staging_bytes`` (store/tmp: deploys in flight or interrupted). The
deduplication saving is ``logical_bytes`` (every version's files counted in full) minus
``used_bytes``.
"""

from __future__ import annotations

import os
from collections import namedtuple

from .layout import Layout

ModelStatus = namedtuple("ModelStatus", "model current versions size_bytes logical_bytes")

# used, garbage, saved and reclaimable (what gc would delete now with no grace period) are None
# when a manifest or tree cannot be read.
# The saving splits in two: ``file_saved_bytes`` by storing each distinct file once,
# ``chunk_saved_bytes`` by keeping cold large files as shared chunks (design.md, Chunks).
StoreStatus = namedtuple("StoreStatus", "objects bytes_on_disk logical_bytes reclaimable_bytes used_bytes "
                                        "saved_bytes garbage_bytes staging_bytes file_saved_bytes chunk_saved_bytes "
                                        "chunk_bytes",
                         defaults=(0, None, None, None, 0, None, None, 0))


class Status(namedtuple("Status", "models store")):
    __slots__ = ()

    def to_json(self) -> dict:
        return {
            "models": [m._asdict() for m in self.models],
            "store": self.store._asdict(),
        }


def status(ctx) -> Status:
    from datetime import timedelta

    from . import gc

    models = []
    manifests = [ctx.manifests.read(model) for model in ctx.models()]
    for manifest in manifests:
        current = manifest.current_version()
        models.append(ModelStatus(manifest.model, manifest.current, len(manifest.versions),
                                  current.size_bytes if current else 0,
                                  sum(v.size_bytes for v in manifest.versions)))
    # Everything no version uses, whatever its age: gc frees it once past the grace period.
    # The same scan of store/objects also gives the object count and bytes.
    logical = sum(m.logical_bytes for m in models)
    try:
        plan = gc.plan_gc(ctx.layout, ctx.manifests, ctx.trees, grace=timedelta(0), log_age=None,
                          already_read=manifests)
    except gc.GcRefusedError:
        # something is unreadable: 'verify' says what; status still answers what it can
        usage = _store_usage(ctx.layout)
        return Status(models, StoreStatus(usage.objects, usage.total, logical, None,
                                          staging_bytes=usage.staging))
    usage = _store_usage(ctx.layout, objects=False)
    garbage_objects = sum(d.size for d in plan.doomed if d.kind == "object")
    garbage_trees = min(sum(d.size for d in plan.doomed if d.kind == "tree"), usage.copied_trees)
    used = plan.object_bytes - garbage_objects + usage.copied_trees - garbage_trees
    file_saved = logical - plan.file_bytes
    return Status(models, StoreStatus(
        plan.objects, plan.object_bytes + usage.copied_trees + usage.staging, logical,
        sum(d.size for d in plan.doomed if d.kind != "whole"),  # a whole to split is not freed, only shrunk
        used_bytes=used, saved_bytes=logical - used, garbage_bytes=garbage_objects + garbage_trees,
        staging_bytes=usage.staging, file_saved_bytes=file_saved,
        chunk_saved_bytes=max(0, (logical - used) - file_saved), chunk_bytes=plan.chunk_bytes))


_Usage = namedtuple("_Usage", "objects object_bytes copied_trees staging")
_Usage.total = property(lambda u: u.object_bytes + u.copied_trees + u.staging)


def _store_usage(layout: Layout, objects: bool = True) -> _Usage:
    """Objects in the store and bytes on disk -- of objects, of materialized trees made of
    copies, and of store/tmp (staging) -- counting each inode once, in that order.

    Materialized trees are hard links to objects and add nothing; only a tree made of copies
    (a filesystem without hard links) is walked file by file. ``objects=False`` leaves the
    objects out (the caller's gc scan counted them).
    """
    from .materialize import links_objects

    seen: set[tuple[int, int]] = set()
    count = 0
    copied_trees = [layout.trees / name for name in (os.listdir(layout.trees) if layout.trees.is_dir() else [])
                    if not links_objects(layout.trees / name)]
    bases = ([(layout.objects, "objects")] if objects else []) + [(t, "trees") for t in copied_trees] \
        + [(layout.tmp, "staging")]
    totals = {"objects": 0, "trees": 0, "staging": 0}
    for base, part in bases:
        for dirpath, _, files in os.walk(base):
            for name in files:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                if part == "objects":
                    count += 1
                key = (st.st_dev, st.st_ino)
                if key not in seen:
                    seen.add(key)
                    totals[part] += st.st_size
    return _Usage(count, totals["objects"], totals["trees"], totals["staging"])

