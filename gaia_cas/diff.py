"""diff: what changed between two versions, computed from tree objects (no file is read) --
and, for large files that changed (at or above the chunking threshold), which byte ranges,
from their recipes (a file without one yet is cut once and its recipe kept: design.md, Chunks)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .trees import DIR, TreeReader


@dataclass
class Diff:
    model: str
    a: str
    b: str
    added: list[tuple[str, int]] = field(default_factory=list)  # (path, size)
    removed: list[tuple[str, int]] = field(default_factory=list)
    changed: list[tuple[str, int, int]] = field(default_factory=list)  # (path, size in a, size in b)
    ranges: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # large changed file -> [start, end) in b
    metadata: dict[str, tuple] = field(default_factory=dict)  # key -> (value in a, value in b); None = absent

    def to_json(self) -> dict:
        return {
            "model": self.model, "a": self.a, "b": self.b,
            "added": [{"path": p, "size": s} for p, s in self.added],
            "removed": [{"path": p, "size": s} for p, s in self.removed],
            "changed": [{"path": p, "size_a": sa, "size_b": sb,
                         **({"ranges": [list(r) for r in self.ranges[p]],
                             "changed_bytes": sum(end - start for start, end in self.ranges[p])}
                            if p in self.ranges else {})} for p, sa, sb in self.changed],
            "metadata": {k: {"a": va, "b": vb} for k, (va, vb) in self.metadata.items()},
        }


def _files(reader: TreeReader, tree: str, name: str | None) -> dict[str, tuple[str, int]]:
    """Relative path -> (oid, size) of every file; a file artifact is keyed by its name."""
    return {path: (entry.oid, entry.size) for path, entry in reader.walk(tree) if entry.kind != DIR}


_MISSING = object()


def diff_versions(reader: TreeReader, model: str, a, b, recipe=None) -> Diff:
    """``recipe(oid)`` (optional) gives a large file's recipe, for the changed byte ranges."""
    result = Diff(model, a.version, b.version)
    if a.tree != b.tree:
        files_a, files_b = _files(reader, a.tree, a.name), _files(reader, b.tree, b.name)
        for path in sorted(files_a.keys() | files_b.keys()):
            in_a, in_b = files_a.get(path), files_b.get(path)
            if in_a is None:
                result.added.append((path, in_b[1]))
            elif in_b is None:
                result.removed.append((path, in_a[1]))
            elif in_a[0] != in_b[0]:
                result.changed.append((path, in_a[1], in_b[1]))
                if recipe is not None:
                    old, new = recipe(in_a[0], in_a[1]), recipe(in_b[0], in_b[1])
                    if old is not None and new is not None:
                        from .chunking import changed_ranges

                        result.ranges[path] = changed_ranges(old, new)
    for key in sorted(a.metadata.keys() | b.metadata.keys()):
        va, vb = a.metadata.get(key, _MISSING), b.metadata.get(key, _MISSING)
        if va != vb:
            result.metadata[key] = (None if va is _MISSING else va, None if vb is _MISSING else vb)
    return result


def diff(ctx, name: str, a: str, b: str) -> Diff:
    """Files added, removed and changed between two versions of a model, and metadata changed."""
    from .selectors import select

    manifest = ctx.manifest(name)
    from .recipes import RecipeStore, chunk_threshold, describe

    recipes = RecipeStore(ctx.layout)
    threshold = chunk_threshold(ctx.layout)

    def recipe(oid: str, size: int):
        return describe(ctx.objects, recipes, oid) if size >= threshold else None

    return diff_versions(ctx.trees, manifest.model, select(manifest, a), select(manifest, b), recipe)
