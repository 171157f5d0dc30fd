"""Deploy: a file or folder becomes the model's next version and its current one.

The order is the write order of design.md: validate everything the user gave, stage the
source's bytes (read once, hashed and written in one pass, no lock held), refuse content a
rollback moved away from, install the objects and materialize the tree under the store barrier,
then decide the number and commit under the model's lock, and swap the links. An unchanged
redeploy is recognised from the stat cache's folder memo before anything is staged.
"""

from __future__ import annotations

import os
from collections import namedtuple
from pathlib import Path

from . import clock, history, ingest
from .errors import GaiaCasError, InvalidInputError, ModelNotFoundError, NotFoundError, RolledBackContentError
from .manifest import Manifest, Version, record
from .materialize import build as build_tree
from .names import check_model_name, check_text
from .statcache import StatCache
from .versions import BUMPS, bump, format_version, parse_version, version_key

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the import typing costs at start-up
if TYPE_CHECKING:
    from typing import Any


# The results are namedtuples from collections, not typing.NamedTuple: importing typing costs
# about 1.5 ms on every command, more than the whole stat walk of a small model.

class DeployResult(namedtuple("DeployResult", "model version hash unchanged path size_bytes format file_count "
                                              "previous new_objects dry_run consumed", defaults=(0, False, None))):
    """``consumed``: for deploy --consume, {"linked", "removed", "left"}."""

    __slots__ = ()

    def to_json(self) -> dict:
        return {
            "model": self.model, "version": self.version, "hash": self.hash,
            "unchanged": self.unchanged, "path": self.path, "size_bytes": self.size_bytes,
            "format": self.format, "file_count": self.file_count, "previous": self.previous,
            "new_objects": self.new_objects, "dry_run": self.dry_run, "consumed": self.consumed,
        }


# token: the identity of the manifest file the snapshot was read from
DeployRequest = namedtuple("DeployRequest", "model source snapshot explicit bump_kind force reason metadata "
                                            "user host label token", defaults=(None, None))


def _not_a_number(text: str):
    raise ValueError(text)


def parse_meta(pairs: list[str] | None) -> dict[str, Any]:
    """``K=V`` pairs; V is read as JSON when it parses (numbers, lists), else kept as text."""
    result: dict[str, Any] = {}
    if not pairs:
        return result  # most deploys: not even json is imported
    import json

    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"invalid metadata {pair!r}: expected KEY=VALUE")
        try:
            # NaN and Infinity stay the text they were: no JSON reader would take them back
            result[key.strip()] = json.loads(value, parse_constant=_not_a_number)
        except (ValueError, RecursionError):
            result[key.strip()] = value
    from .codec import check_value

    return check_value(result, "--meta")  # what the manifest could not hold fails now, before any write


def deploy(ctx, name: str, path: str | os.PathLike | None = None, *, bump_kind: str = "minor",
           version: str | None = None, reason: str | None = None, metadata: dict | None = None,
           force: bool = False, dry_run: bool = False, source_label: str | None = None,
           consume: bool = False, new: bool = False, progress=None) -> DeployResult:
    """Deploy a file or folder as the model's next version and make it current.

    ``source_label`` is what the version records as its source when ``path`` is only a
    temporary extraction (import of an archive). ``consume`` hands the source over: its
    files are hard-linked into the store instead of copied where the filesystem allows,
    and the source is deleted once the deploy has committed (see README, deploy --consume).
    ``new`` creates a model whose name is close to an existing one's (else refused as a typo).
    ``progress(done, total)`` hears the bytes staged (see :mod:`gaia_cas.progress`); an
    unchanged redeploy stages nothing and never calls it.
    """
    request = _request(ctx, name, path, bump_kind, version, reason, metadata, force, new)
    if source_label is not None:
        request = request._replace(label=source_label)
    snapshot = request.snapshot
    current = snapshot.current_version() if snapshot else None
    if consume:
        consumption = ingest.plan_consumption(request.source, ctx.own_folders())
    else:
        consumption = None
        if source_label is None:  # not an extraction of ours in store/tmp
            ingest.refuse_own_folders(request.source, ctx.own_folders())
    # A temporary extraction (source_label set) would only fill the cache with dead entries,
    # and so would a consumed source, which is gone after the deploy.
    cache = StatCache(ctx.layout.store / "statcache.msgpack") if source_label is None and not consume else None
    if consumption is not None:
        node, remembered = consumption.node, None
    else:
        node, remembered = ingest.recall(request.source, cache)
    if not force and remembered is None:
        _refuse_wrong_level(request.source, node)
    if dry_run:
        built = remembered or ingest.hash_only(node, cache)
        fmt = ingest.source_format(node)
        if current and current.tree == built.tree and not force:
            number, unchanged = current.version, True
        else:
            _refuse_rolled_back(ctx, request, snapshot, built.tree)
            number, unchanged = request.explicit or bump(snapshot.highest if snapshot else None, bump_kind), False
        return DeployResult(request.model, number, built.tree, unchanged, None, built.size, fmt,
                            built.file_count, snapshot.current if snapshot else None, dry_run=True)

    committed = False
    if remembered is not None and _still_current(ctx, request, remembered, current):
        # Every file has the stat it had when this tree was deployed: nothing to read, stage
        # or write, not even the stat cache.
        built = remembered
    else:
        with ctx.store_errors(), ctx.objects.staging() as staging:
            # the long part: no lock held
            built = ingest.stage(staging, request.source, cache, consumption, node, progress=progress)
            if not _still_current(ctx, request, built, current):
                # Decided before anything is installed, and again under the lock at the commit.
                _refuse_rolled_back(ctx, request, snapshot, built.tree)
                fmt = ingest.source_format(node)  # from the scan's checked files, before the barrier
                with _claiming_if_new(ctx, request), ctx.writing():  # from here to the commit, gc waits
                    # Any failure from here to the commit (a lock timeout, a signal, a refusal
                    # under the lock) takes back what this deploy added (Staging._take_back).
                    new_objects = staging.install()
                    tree_dir, made = build_tree(ctx.layout, ctx.objects, built.tree)
                    staging.materialized(tree_dir, made, lambda: tree_in_use(ctx, built.tree))
                    staging.repair_tree(tree_dir)  # no file of it may be a source's inode
                    number, unchanged, previous = commit(ctx, request, built, fmt, staging.keep)
                committed = True
        if cache is not None:
            cache.save(str(request.source))
    if not committed:
        number, unchanged, previous, new_objects = current.version, True, current.version, 0
        tree_dir, fmt = ctx.layout.tree_path(built.tree), current.format
    model, source = request.model, request.source
    consumed = None
    if consumption is not None:  # committed (or already current): the store holds every byte
        ingest.consume_source(consumption)
        consumed = {"linked": consumption.linked, "removed": consumption.removed, "left": consumption.left}
        ctx.oplog.write("gaia_cas.deploy", f"consumed {source} for {model}: {consumption.linked} files linked "
                         f"into the store, {consumption.removed} removed, {len(consumption.left)} left")

    if unchanged:
        ctx.oplog.write("gaia_cas.deploy", f"{model}: {source} is identical to current version {number} "
                         f"({built.tree}); nothing deployed")
    else:
        ctx.oplog.write(
            "gaia_cas.deploy",
            f"deployed {model} {number} from {source}: hash {built.tree}, {built.file_count} files, "
            f"{built.size} bytes ({built.size / 1048576:.2f} MB), format {fmt}, {new_objects} new objects; "
            f"current {previous or '-'} -> {number} by {request.user}@{request.host}"
            + (f" reason={reason!r}" if reason else ""),
        )
    return DeployResult(model, number, built.tree, unchanged, str(ingest.artifact_path(tree_dir, built.name)),
                        built.size, fmt, built.file_count, previous, new_objects, consumed=consumed)


def _claiming_if_new(ctx, request: DeployRequest):
    """A deploy that creates its model claims the model's default link, as ``model add`` does:
    under the claims lock, taken before the barrier, the link is checked again against every
    model -- one added since the request was read may own it by now."""
    from contextlib import ExitStack

    stack = ExitStack()
    if request.snapshot is None:
        stack.enter_context(ctx.claims())
        if ctx.manifests.token(request.model) is None:  # still new: nobody made it meanwhile
            try:
                ctx.check_link_free(request.model, "current", ctx.layout.default_link(request.model))
            except BaseException:
                stack.close()
                raise
    return stack


def tree_in_use(ctx, tree: str) -> bool:
    """Whether a committed manifest of any model names ``tree`` (then a failed deploy that
    materialized it must not take it back)."""
    for model in ctx.models():
        manifest = ctx.manifests.read(model)
        if manifest is not None and any(v.tree == tree for v in manifest.versions):
            return True
    return False


def _still_current(ctx, request: DeployRequest, built: ingest.Built, current) -> bool:
    """Whether ``built`` is the current version of a manifest that has not changed since the
    request read it: a true 'unchanged' as of that read, with no lock, barrier or install."""
    return (current is not None and current.tree == built.tree and not request.force and not current.broken
            and ctx.manifests.token(request.model) == request.token)


def _refuse_rolled_back(ctx, request: DeployRequest, manifest: Manifest | None, tree: str):
    """Raise when ``tree`` is content a rollback moved away from (see :mod:`gaia_cas.history`);
    with --force, return what the deploy overrides, so its history event can say so."""
    if manifest is None:
        return None
    found = history.rolled_back_from(manifest, tree)
    if found is None:
        return None
    version, event = found
    if request.force:
        return {"version": version, "generation": event.generation}
    raise RolledBackContentError(manifest.model, version, event,
                                 history.describe_rollback(manifest.model, version, event))


def _refuse_near_miss(ctx, model: str) -> None:
    """``deploy sdd PATH`` where ``ssd`` exists is a typo far more often than a new model: a
    name difflib finds close (ratio 0.6 or more) to a model's name or alias is refused. A name
    that only extends one (``catboost-copy``, ``cat2``) or differs from it only in digits
    (``ssd-v2`` beside ``ssd-v1``) is a deliberate variant, not a typo."""
    import difflib

    names = []
    for other in ctx.models():
        names += [other, *ctx.manifest(other).config.aliases]
    digits = str.maketrans("", "", "0123456789")
    candidates = [n for n in names if not (model.startswith(n) or model.endswith(n)
                                           or model.translate(digits) == n.translate(digits))]
    close = difflib.get_close_matches(model, candidates, n=1)
    if close:
        raise NotFoundError(
            f"no model '{model}': did you mean {close[0]}? (a new model: 'gaia-cas model add {model}' first, "
            "or deploy --new)")


def _refuse_wrong_level(source: Path, node) -> None:
    """A folder of no known format that holds one a level down (``big/saved_model``) is most
    likely the wrong folder: refused with the one meant, unless --force."""
    if not isinstance(node, ingest.ScannedDir) or ingest.source_format(node) != "unknown":
        return
    from .formats import nested_format

    found = nested_format({name: {n for n, c in child.children.items() if isinstance(c, ingest.ScannedFile)}
                           for name, child in node.children.items() if isinstance(child, ingest.ScannedDir)})
    if found is not None:
        inner, fmt = found
        raise InvalidInputError(f"{source} is no model format gaia-cas knows, but {source.name}/{inner} is a {fmt}: "
                                f"did you mean {source / inner}? (--force deploys {source.name} as it is)")


def _request(ctx, name, path, bump_kind, version, reason, metadata, force, new=False) -> DeployRequest:
    """Validate everything a deploy was given, before a single byte is written."""
    if bump_kind not in BUMPS:
        raise InvalidInputError(f"unknown bump {bump_kind!r}: use one of {', '.join(BUMPS)}")
    ctx.manifests.lock_timeout  # validated now, not after minutes of staging
    explicit = format_version(parse_version(version)) if version is not None else None
    try:
        model = ctx.model(name)
        snap = ctx.manifests.snapshot(model)
        snapshot, token = (snap.manifest, snap.token) if snap else (None, None)
    except ModelNotFoundError:
        model, snapshot, token = check_model_name(name), None, None
        if not new:
            _refuse_near_miss(ctx, model)
    if path is None:
        if snapshot is None:
            raise ModelNotFoundError(name, ctx.models())  # with a PATH, deploy would create it
        if not snapshot.config.source:
            raise InvalidInputError(f"model '{model}' has no default source: give a PATH or set one with "
                                    f"'gaia-cas model set {model} --source PATH'")
        path = snapshot.config.source
    if snapshot is None:
        ctx.check_link_free(model, "current", ctx.layout.default_link(model))
    else:
        snapshot.versions  # decoded and checked in full now: a bad manifest fails before any write
        ctx.check_link_locations(snapshot)
    if explicit is not None and snapshot is not None and explicit in snapshot.assigned():
        raise InvalidInputError(f"version {explicit} of '{model}' was already assigned; "
                                "version numbers are never reused")
    check_text(str(Path(path).absolute()), "source path")
    check_text(reason, "--reason")
    check_text(metadata, "--meta")
    if metadata:
        from .codec import check_value

        check_value(metadata, "--meta")  # before a byte is staged: the commit would refuse it
    user, host = clock.who()
    return DeployRequest(model, Path(path).absolute(), snapshot, explicit, bump_kind, force, reason,
                          dict(metadata or {}), user, host, token=token)


def commit(ctx, request: DeployRequest, built: ingest.Built, fmt: str,
                   committed=None) -> tuple[str, bool, str | None]:
    """Under the model's lock: decide the number (or 'unchanged') against the fresh manifest.
    ``committed()`` is called the moment the commit is visible."""
    now = clock.now()  # the moment the version is committed is its timestamp
    at = clock.stamp(now)

    def on_commit(manifest: Manifest) -> None:
        if committed is not None:
            committed()
        ctx.sync_link(manifest)

    with ctx.manifests.edit(request.model, create=True, check_tree=ctx.check_complete,
                             on_commit=on_commit) as manifest:
        previous = manifest.current
        current = manifest.current_version()
        if current is not None and current.tree == built.tree and not request.force and not current.broken:
            return current.version, True, previous
        overrides = _refuse_rolled_back(ctx, request, manifest, built.tree)
        assigned = manifest.assigned()
        if request.explicit is not None:
            if request.explicit in assigned:
                raise InvalidInputError(f"version {request.explicit} of '{request.model}' was already assigned; "
                                        "version numbers are never reused")
            number = request.explicit
        else:
            number = bump(manifest.highest, request.bump_kind)
            while number in assigned:  # an explicit --version took it earlier
                number = bump(number, "patch")
        metadata = {**manifest.config.metadata, **request.metadata}
        manifest.versions.append(Version(
            version=number, deployment_id=clock.deployment_id(now), created_at=at,
            tree=built.tree, artifact=built.artifact, name=built.name, size_bytes=built.size,
            file_count=built.file_count, format=fmt, metadata=metadata, reason=request.reason,
            user=request.user, host=request.host, source=request.label or str(request.source),
        ))
        if manifest.highest is None or version_key(number) > version_key(manifest.highest):
            manifest.highest = number
        manifest.current = number
        manifest.new_trees.add(built.tree)
        # A forced deploy over a rollback says so, with its tree: the decision it overrides
        # stays visible in the history, and stays overridden after this version is cleaned up.
        details = {"overrides_rollback": overrides, "tree": built.tree} if overrides else None
        record(manifest, "deploy", version=number, before=previous, at=at, user=request.user,
               host=request.host, reason=request.reason, details=details)
    return number, False, previous


def deploy_all(ctx, **options) -> tuple[list[DeployResult], list[str], list[tuple[str, str]]]:
    """Deploy every model from its default source.

    Returns the results, the models skipped (no source) and the models that failed with
    why: one model's failure does not stop the others, and each outcome is reported.
    """
    models = ctx.models()
    with_source = [m for m in models if ctx.manifests.read(m).config.source]
    if not with_source:
        raise InvalidInputError("no model has a default source to deploy from; set one with 'gaia-cas model set NAME --source PATH'")
    if options.get("version") is not None and len(with_source) > 1:
        raise InvalidInputError("--version names one version of one model; it cannot apply to every model")
    results, failed = [], []
    for model in with_source:
        try:
            results.append(deploy(ctx, model, **options))
        except GaiaCasError as exc:
            failed.append((model, str(exc)))
    return results, [m for m in models if m not in with_source], failed

