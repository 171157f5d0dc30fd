"""The library API: everything the CLI can do, as methods of :class:`Repository`.

Each mutating method follows the same order (DESIGN.md, write protocol): validate everything
the user gave, write objects (staged, then installed), materialize the tree, and only then take
the model's lock to commit the manifest and swap the link. A failure before the commit leaves
no trace but unreferenced objects for gc; the commit itself is one atomic rename.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from collections import namedtuple

from . import clock, history, ingest, links
from .errors import (
    CorruptionError,
    GaiaCasError,
    InvalidInputError,
    ModelNotFoundError,
    NotFoundError,
    RolledBackContentError,
    SourceError,
    StoreError,
    VersionNotFoundError,
)
from .layout import Layout, find_root, normalize_link
from .locking import store_barrier
from .manifest import Manifest, Manifests, ModelConfig, Version, record
from .materialize import materialize
from .names import check_model_name, check_text
from .objects import ObjectStore
from .statcache import StatCache
from .oplog import OpLog, tail
from .trees import TreeReader
from .versions import BUMPS, bump, format_version, parse_selector, parse_version, version_key

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the import typing costs at start-up
if TYPE_CHECKING:
    from typing import Any
    from datetime import datetime


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


class RollbackResult(namedtuple("RollbackResult", "model version previous unchanged path")):
    __slots__ = ()

    def to_json(self) -> dict:
        return {"model": self.model, "version": self.version, "previous": self.previous,
                "unchanged": self.unchanged, "path": self.path}


ModelStatus = namedtuple("ModelStatus", "model current versions size_bytes logical_bytes")

# bytes_on_disk = used_bytes + garbage_bytes + staging_bytes: what versions use, what no version
# uses (gc frees it), and store/tmp (deploys in flight or interrupted). saved_bytes (the
# deduplication saving) = logical_bytes - used_bytes. reclaimable_bytes: what gc would delete now
# with no grace period. used, garbage, saved and reclaimable are None when a manifest or tree
# cannot be read.
StoreStatus = namedtuple("StoreStatus", "objects bytes_on_disk logical_bytes reclaimable_bytes used_bytes "
                                        "saved_bytes garbage_bytes staging_bytes", defaults=(0, None, None, None, 0))


class Status(namedtuple("Status", "models store")):
    __slots__ = ()

    def to_json(self) -> dict:
        return {
            "models": [m._asdict() for m in self.models],
            "store": self.store._asdict(),
        }


# token: the identity of the manifest file the snapshot was read from
_DeployRequest = namedtuple("_DeployRequest", "model source snapshot explicit bump_kind force reason metadata "
                                              "user host label token", defaults=(None, None))


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
            result[key.strip()] = json.loads(value)
        except (ValueError, RecursionError):
            result[key.strip()] = value
    from .codec import check_value

    return check_value(result, "--meta")  # what the manifest could not hold fails now, before any write


class Repository:
    """A gaia-cas data root: its object store, manifests, links and log."""

    def __init__(self, root: str | os.PathLike, *, lock_timeout: float | None = None):
        self.layout = Layout(Path(root).absolute())
        self.objects = ObjectStore(self.layout)
        self.trees = TreeReader(self.objects)
        self.manifests = Manifests(self.layout, lock_timeout)
        self.oplog = OpLog(self.layout.logs)

    @classmethod
    def open(cls, root: str | os.PathLike | None = None, *, default_root=None,
             lock_timeout: float | None = None) -> "Repository":
        return cls(find_root(root, default_root), lock_timeout=lock_timeout)

    @classmethod
    def init(cls, root: str | os.PathLike, **kwargs) -> "Repository":
        repo = cls(root, **kwargs)
        try:
            repo.layout.ensure()
        except OSError as exc:
            raise StoreError(f"cannot create a gaia-cas root in {repo.layout.root}: {exc.strerror or exc}") from exc
        return repo

    @property
    def root(self) -> Path:
        return self.layout.root

    # -- models ------------------------------------------------------------------------------

    def models(self) -> list[str]:
        return self.manifests.names()

    def model(self, name: str) -> str:
        """Resolve a model name or alias to the model's name."""
        return self.manifests.lookup(name)

    def _snapshot(self, model: str):
        snap = self.manifests.snapshot(model)
        if snap is None:  # removed between lookup and read
            raise ModelNotFoundError(model, self.models())
        return snap

    def manifest(self, name: str) -> Manifest:
        model = self.model(name)
        manifest = self.manifests.read(model)
        if manifest is None:  # removed between lookup and read
            raise ModelNotFoundError(name, self.models())
        return manifest

    def _check_config(self, model: str, config: ModelConfig) -> None:
        for alias in config.aliases:
            check_model_name(alias)
            if alias == model:
                raise InvalidInputError(f"alias '{alias}' is the model's own name")
        link = config.link or self.layout.default_link(model)
        for other in self.models():
            if other == model:
                continue
            theirs = self.manifests.read(other)
            if other in config.aliases:
                raise InvalidInputError(f"alias '{other}' is already a model name")
            clash = set(config.aliases) & set(theirs.config.aliases)
            if clash:
                raise InvalidInputError(f"alias '{sorted(clash)[0]}' already belongs to model '{other}'")
        self.check_link_free(model, "current", link)

    def _config_from(self, base: ModelConfig, *, aliases, source, link, metadata) -> ModelConfig:
        check_text(source, "--source")
        check_text(link, "--link")
        check_text(metadata, "--meta")
        config = ModelConfig(
            aliases=list(base.aliases), source=base.source, link=base.link,
            metadata=dict(base.metadata), retention=dict(base.retention),
        )
        if aliases is not None:
            config.aliases = sorted(dict.fromkeys(aliases))
        if source is not None:
            source_path = Path(source).absolute()
            if not source_path.exists():
                raise SourceError(f"source {source_path} does not exist")
            ingest.refuse_own_folders(source_path, self._own_folders())
            config.source = str(source_path)
        if link is not None:
            config.link = normalize_link(link, self.root)
        if metadata:
            config.metadata.update(metadata)
        return config

    @contextmanager
    def claims(self):
        """Hold the store-wide settings lock (``manifests/.config.lock``) for the body.

        A link or an alias is claimed by checking that no other model owns it, then committing
        one manifest: two such claims under two different model locks both passed the check
        and both committed (16 of 30 races), and model A's server read model B's weights. So
        every claim -- model add/set, promote -- decides and commits under this one lock. It
        is always taken before the barrier and the model's lock, never inside them.
        """
        from .atomic import make_dirs
        from .locking import hold_flock

        with _translate_store_errors(self.layout):
            make_dirs(self.layout.manifests)
        with hold_flock(self.layout.config_lock_path, self.manifests.lock_timeout, shared=False,
                        holder="another gaia-cas process is changing a model's links or aliases"):
            yield

    def add_model(self, name: str, *, aliases: list[str] | None = None, source: str | None = None,
                  link: str | None = None, metadata: dict | None = None, reason: str | None = None) -> ModelConfig:
        check_model_name(name)
        with self.claims():
            return self._add_model(name, aliases=aliases, source=source, link=link, metadata=metadata, reason=reason)

    def _add_model(self, name: str, *, aliases, source, link, metadata, reason) -> ModelConfig:
        if self.layout.manifest_path(name).exists():
            raise InvalidInputError(f"model '{name}' already exists; change it with 'gaia-cas model set {name} ...'")
        try:
            existing_owner = self.model(name)
        except NotFoundError:
            existing_owner = None
        if existing_owner is not None:
            raise InvalidInputError(f"'{name}' is already an alias of model '{existing_owner}'")
        config = self._config_from(ModelConfig(), aliases=aliases or [], source=source, link=link, metadata=metadata)
        self._check_config(name, config)
        return self._commit_config(name, config, "model-add", reason, create=True)

    def set_model(self, name: str, *, aliases: list[str] | None = None, source: str | None = None,
                  link: str | None = None, metadata: dict | None = None, keep: int | None = None,
                  keep_within: str | None = None, reason: str | None = None) -> ModelConfig:
        """Change a model's settings; ``keep``/``keep_within`` set its retention policy."""
        with self.claims():
            return self._set_model(name, aliases=aliases, source=source, link=link, metadata=metadata, keep=keep,
                                   keep_within=keep_within, reason=reason)

    def _set_model(self, name: str, *, aliases, source, link, metadata, keep, keep_within, reason) -> ModelConfig:
        model = self.model(name)
        current = self.manifest(model)
        config = self._config_from(current.config, aliases=aliases, source=source, link=link, metadata=metadata)
        if keep is not None or keep_within is not None:
            from .retention import Policy

            policy = Policy.of(current, keep, keep_within or None)  # validates both
            config.retention = {"keep": policy.keep,
                                "keep_within": None if keep_within == "" else policy.keep_within}
        self._check_config(model, config)
        return self._commit_config(model, config, "model-set", reason, create=False)

    def _commit_config(self, model: str, config: ModelConfig, action: str, reason, *, create: bool,
                       details: dict | None = None) -> ModelConfig:
        check_text(reason, "--reason")
        user, host = clock.who()
        new_link = config.link or self.layout.default_link(model)

        def relink(manifest: Manifest) -> None:
            self.sync_link(manifest)
            if old_link != new_link:
                links.drop_link(self.layout, old_link)

        with self.writing():
            with self.manifests.edit(model, create=create, on_commit=relink) as manifest:
                if create and manifest.generation:
                    raise InvalidInputError(f"model '{model}' already exists")
                old_link = manifest.config.link or self.layout.default_link(model)
                manifest.config = config
                record(manifest, action, version=None, before=manifest.current, at=clock.stamp(clock.now()),
                       user=user, host=host, reason=reason, details=details)
        self.oplog.write("gaia_cas.model", f"{action} {model}: aliases={config.aliases} source={config.source} "
                         f"link={new_link} metadata={config.metadata} retention={config.retention} by {user}@{host}"
                         + (f" reason={reason!r}" if reason else ""))
        return config

    # -- deploy ------------------------------------------------------------------------------

    def deploy(self, name: str, path: str | os.PathLike | None = None, *, bump_kind: str = "minor",
               version: str | None = None, reason: str | None = None, metadata: dict | None = None,
               force: bool = False, dry_run: bool = False, source_label: str | None = None,
               consume: bool = False) -> DeployResult:
        """Deploy a file or folder as the model's next version and make it current.

        ``source_label`` is what the version records as its source when ``path`` is only a
        temporary extraction (import of an archive). ``consume`` hands the source over: its
        files are hard-linked into the store instead of copied where the filesystem allows,
        and the source is deleted once the deploy has committed (see README, deploy --consume).
        """
        request = self._deploy_request(name, path, bump_kind, version, reason, metadata, force)
        if source_label is not None:
            request = request._replace(label=source_label)
        snapshot = request.snapshot
        current = snapshot.current_version() if snapshot else None
        if consume:
            consumption = ingest.plan_consumption(request.source, self._own_folders())
        else:
            consumption = None
            if source_label is None:  # not an extraction of ours in store/tmp
                ingest.refuse_own_folders(request.source, self._own_folders())
        # A temporary extraction (source_label set) would only fill the cache with dead entries,
        # and so would a consumed source, which is gone after the deploy.
        cache = StatCache(self.layout.store / "statcache.msgpack") if source_label is None and not consume else None
        if consumption is not None:
            node, remembered = consumption.node, None
        else:
            node, remembered = ingest.recall(request.source, cache)
        if dry_run:
            from . import formats

            built = remembered or ingest.hash_only(node, cache)
            fmt = formats.detect(request.source)
            if current and current.tree == built.tree and not force:
                number, unchanged = current.version, True
            else:
                self._refuse_rolled_back(request, snapshot, built.tree)
                number, unchanged = request.explicit or bump(snapshot.highest if snapshot else None, bump_kind), False
            return DeployResult(request.model, number, built.tree, unchanged, None, built.size, fmt,
                                built.file_count, snapshot.current if snapshot else None, dry_run=True)

        committed = False
        if remembered is not None and self._still_current(request, remembered, current):
            # Every file has the stat it had when this tree was deployed: nothing to read, stage
            # or write, not even the stat cache.
            built = remembered
        else:
            with _translate_store_errors(self.layout), self.objects.staging() as staging:
                built = ingest.stage(staging, request.source, cache, consumption, node)  # the long part: no lock held
                if not self._still_current(request, built, current):
                    # Decided before anything is installed, and again under the lock at the commit.
                    self._refuse_rolled_back(request, snapshot, built.tree)
                    from . import formats  # zipfile and friends: only deploys that commit pay for them

                    fmt = formats.detect(request.source)
                    with self.writing():  # from here to the commit, gc waits (the store barrier)
                        new_objects = staging.install()
                        existed = self.layout.tree_path(built.tree).is_dir()
                        tree_dir = self.materialize(built.tree)
                        staging.materialized(tree_dir, created=not existed)
                        staging.repair_tree(tree_dir)  # no file of it may be a source's inode
                        number, unchanged, previous = self._commit_deploy(request, built, fmt, staging.keep)
                    committed = True
            if cache is not None:
                cache.save(str(request.source))
        if not committed:
            number, unchanged, previous, new_objects = current.version, True, current.version, 0
            tree_dir, fmt = self.layout.tree_path(built.tree), current.format
        model, source = request.model, request.source
        consumed = None
        if consumption is not None:  # committed (or already current): the store holds every byte
            ingest.consume_source(consumption)
            consumed = {"linked": consumption.linked, "removed": consumption.removed, "left": consumption.left}
            self.oplog.write("gaia_cas.deploy", f"consumed {source} for {model}: {consumption.linked} files linked "
                             f"into the store, {consumption.removed} removed, {len(consumption.left)} left")

        if unchanged:
            self.oplog.write("gaia_cas.deploy", f"{model}: {source} is identical to current version {number} "
                             f"({built.tree}); nothing deployed")
        else:
            self.oplog.write(
                "gaia_cas.deploy",
                f"deployed {model} {number} from {source}: hash {built.tree}, {built.file_count} files, "
                f"{built.size} bytes ({built.size / 1048576:.2f} MB), format {fmt}, {new_objects} new objects; "
                f"current {previous or '-'} -> {number} by {request.user}@{request.host}"
                + (f" reason={reason!r}" if reason else ""),
            )
        return DeployResult(model, number, built.tree, unchanged, str(ingest.artifact_path(tree_dir, built.name)),
                            built.size, fmt, built.file_count, previous, new_objects, consumed=consumed)

    def _still_current(self, request: "_DeployRequest", built: ingest.Built, current) -> bool:
        """Whether ``built`` is the current version of a manifest that has not changed since the
        request read it: a true 'unchanged' as of that read, with no lock, barrier or install."""
        return (current is not None and current.tree == built.tree and not request.force and not current.broken
                and self.manifests.token(request.model) == request.token)

    def _refuse_rolled_back(self, request: "_DeployRequest", manifest: Manifest | None, tree: str):
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

    def _deploy_request(self, name, path, bump_kind, version, reason, metadata, force) -> "_DeployRequest":
        """Validate everything a deploy was given, before a single byte is written."""
        if bump_kind not in BUMPS:
            raise InvalidInputError(f"unknown bump {bump_kind!r}: use one of {', '.join(BUMPS)}")
        self.manifests.lock_timeout  # validated now, not after minutes of staging
        explicit = format_version(parse_version(version)) if version is not None else None
        try:
            model = self.model(name)
            snap = self.manifests.snapshot(model)
            snapshot, token = (snap.manifest, snap.token) if snap else (None, None)
        except ModelNotFoundError:
            model, snapshot, token = check_model_name(name), None, None
        if path is None:
            if snapshot is None:
                raise ModelNotFoundError(name, self.models())  # with a PATH, deploy would create it
            if not snapshot.config.source:
                raise InvalidInputError(f"model '{model}' has no default source: give a PATH or set one with "
                                        f"'gaia-cas model set {model} --source PATH'")
            path = snapshot.config.source
        if snapshot is None:
            self.check_link_free(model, "current", self.layout.default_link(model))
        else:
            snapshot.versions  # decoded and checked in full now: a bad manifest fails before any write
            self.check_link_locations(snapshot)
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
        return _DeployRequest(model, Path(path).absolute(), snapshot, explicit, bump_kind, force, reason,
                              dict(metadata or {}), user, host, token=token)

    def _commit_deploy(self, request: "_DeployRequest", built: ingest.Built, fmt: str,
                       committed=None) -> tuple[str, bool, str | None]:
        """Under the model's lock: decide the number (or 'unchanged') against the fresh manifest.
        ``committed()`` is called the moment the commit is visible."""
        now = clock.now()  # the moment the version is committed is its timestamp
        at = clock.stamp(now)

        def on_commit(manifest: Manifest) -> None:
            if committed is not None:
                committed()
            self.sync_link(manifest)

        with self.manifests.edit(request.model, create=True, check_tree=self.check_complete,
                                 on_commit=on_commit) as manifest:
            previous = manifest.current
            current = manifest.current_version()
            if current is not None and current.tree == built.tree and not request.force and not current.broken:
                return current.version, True, previous
            overrides = self._refuse_rolled_back(request, manifest, built.tree)
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

    def deploy_all(self, **options) -> tuple[list[DeployResult], list[str], list[tuple[str, str]]]:
        """Deploy every model from its default source.

        Returns the results, the models skipped (no source) and the models that failed with
        why: one model's failure does not stop the others, and each outcome is reported.
        """
        models = self.models()
        with_source = [m for m in models if self.manifests.read(m).config.source]
        if not with_source:
            raise InvalidInputError("no model has a default source to deploy from; set one with 'gaia-cas model set NAME --source PATH'")
        if options.get("version") is not None and len(with_source) > 1:
            raise InvalidInputError("--version names one version of one model; it cannot apply to every model")
        results, failed = [], []
        for model in with_source:
            try:
                results.append(self.deploy(model, **options))
            except GaiaCasError as exc:
                failed.append((model, str(exc)))
        return results, [m for m in models if m not in with_source], failed

    # -- rollback ----------------------------------------------------------------------------

    def rollback(self, name: str | None, selector: str, *, reason: str | None = None) -> RollbackResult:
        """Make an existing version current again: a manifest edit and a link swap, no copying.

        ``name`` None means the only model of the root (``gaia-cas rollback previous``).
        """
        model = self.model(name) if name is not None else self._only_model(selector)
        snap = self._snapshot(model)
        manifest = snap.manifest
        target = self.select(manifest, selector)  # validate before any write
        if target.broken:
            raise CorruptionError(f"version {target.version} of '{model}' is marked broken by verify "
                                  "(objects it needs are corrupt or missing); it cannot be made current")
        self.check_link_locations(manifest)
        check_text(reason, "--reason")
        user, host = clock.who()
        now = clock.stamp(clock.now())
        outcome: dict[str, Any] = {}
        with self.writing():
            self.materialize(target.tree)
            with self.manifests.edit(model, on_commit=self.sync_link, reuse=snap) as manifest:
                chosen = self.select(manifest, selector)  # re-resolved under the lock
                if chosen.broken:
                    raise CorruptionError(f"version {chosen.version} of '{model}' is marked broken by verify "
                                          "(objects it needs are corrupt or missing); it cannot be made current")
                previous = manifest.current
                outcome.update(version=chosen.version, previous=previous, tree=chosen.tree, name=chosen.name)
                if chosen.version == previous:
                    outcome["unchanged"] = True
                    self.sync_link(manifest)  # also how a stale link is regenerated by hand
                else:
                    if chosen.tree != target.tree:
                        self.materialize(chosen.tree)
                    manifest.current = chosen.version
                    left = manifest.find(previous) if previous else None
                    record(manifest, "rollback", version=chosen.version, before=previous, at=now,
                           user=user, host=host, reason=reason,
                           details={"from_tree": left.tree} if left is not None else None)
                    outcome["unchanged"] = False
        path = str(ingest.artifact_path(self.layout.tree_path(outcome["tree"]), outcome["name"]))
        if not outcome["unchanged"]:
            self.oplog.write("gaia_cas.rollback", f"rolled back {model}: current {outcome['previous'] or '-'} -> "
                             f"{outcome['version']} ({outcome['tree']}) by {user}@{host}"
                             + (f" reason={reason!r}" if reason else ""))
        return RollbackResult(model, outcome["version"], outcome["previous"], outcome["unchanged"], path)

    def _only_model(self, selector: str) -> str:
        models = self.models()
        if len(models) == 1:
            return models[0]
        if not models:
            raise NotFoundError(f"this root holds no model yet: nothing to roll back to '{selector}'")
        raise InvalidInputError(f"this root holds several models ({', '.join(models)}): name one, as in "
                                f"'gaia-cas rollback MODEL {selector}'")

    # -- pins, retention, gc -----------------------------------------------------------------

    def pin(self, name: str, selector: str, *, pinned: bool = True, reason: str | None = None) -> Version:
        """Pin (or unpin) a version: a pinned version survives every cleanup."""
        model = self.model(name)
        self.select(self.manifest(model), selector)  # validate before taking any lock
        check_text(reason, "--reason")
        user, host = clock.who()
        action = "pin" if pinned else "unpin"
        with self.writing():
            with self.manifests.edit(model) as manifest:
                manifest.versions  # decoded into objects: the flag is changed on the stored version
                version = self.select(manifest, selector)
                if version.pinned != pinned:
                    version.pinned = pinned
                    record(manifest, action, version=version.version, before=manifest.current,
                           at=clock.stamp(clock.now()), user=user, host=host, reason=reason)
                    changed = True
                else:
                    changed = False
        if changed:
            self.oplog.write("gaia_cas.retention", f"{action}ned {model} {version.version} by {user}@{host}"
                             + (f" reason={reason!r}" if reason else ""))
        return version

    def plan_cleanup(self, names: list[str] | None = None, *, keep: int | None = None,
                     older_than: str | None = None, now: datetime | None = None) -> list:
        """What a cleanup would remove, model by model, and which rule keeps each survivor."""
        from .retention import Policy, plan_model

        now = now or clock.now()
        models = [self.model(n) for n in names] if names else self.models()
        return [plan_model(m, Policy.of(m, keep, older_than), now) for m in (self.manifest(x) for x in models)]

    def cleanup(self, names: list[str] | None = None, *, keep: int | None = None, older_than: str | None = None,
                dry_run: bool = False, reason: str | None = None) -> list:
        """Apply retention: plan, then (unless ``dry_run``) drop the planned versions from manifests.

        Under each model's lock the plan is made again on the fresh manifest, and only versions
        that both plans remove go: a version that became current or pinned meanwhile, or a new
        deploy, is never removed by a plan made before it. Objects are left to gc.
        """
        check_text(reason, "--reason")
        now = clock.now()
        plans = self.plan_cleanup(names, keep=keep, older_than=older_than, now=now)
        if dry_run:
            return plans
        user, host = clock.who()
        for plan in plans:
            plan.removed = []
            if not plan.remove:
                continue
            try:
                self._execute_cleanup(plan, now, user, host, reason)
            except GaiaCasError as exc:
                plan.error = str(exc)  # reported; the other models are still cleaned
        return plans

    def _execute_cleanup(self, plan, now, user, host, reason) -> None:
        """Drop the versions both the plan and a fresh plan under the model's lock remove."""
        from .retention import plan_model

        with self.writing(), self.manifests.edit(plan.model) as manifest:
            fresh = plan_model(manifest, plan.policy, now)
            plan.removed = sorted(set(plan.remove) & set(fresh.remove), key=version_key)
            if plan.removed:
                gone = set(plan.removed)
                manifest.versions = [v for v in manifest.versions if v.version not in gone]
                record(manifest, "cleanup", version=None, before=manifest.current,
                       at=clock.stamp(now), user=user, host=host, reason=reason,
                       details={"removed": plan.removed, "policy": plan.policy.describe()})
        if plan.removed:
            self.oplog.write("gaia_cas.retention",
                             f"cleanup {plan.model} ({plan.policy.describe()}): removed "
                             f"{', '.join(plan.removed)} by {user}@{host}" + (f" reason={reason!r}" if reason else ""))

    def plan_gc(self, *, grace=None, log_age=None):
        """What gc would delete now. ``log_age=None`` leaves logs out of the plan."""
        from . import gc

        return gc.plan_gc(self.layout, self.manifests, self.trees,
                          grace=gc.DEFAULT_GRACE if grace is None else grace, log_age=log_age)

    def gc(self, *, grace=None, log_age=None, dry_run: bool = False):
        """Delete what no manifest reaches. Returns (plan, result); result is None for a dry run."""
        from . import gc

        grace = gc.DEFAULT_GRACE if grace is None else grace
        log_age = gc.DEFAULT_LOG_AGE if log_age is None else log_age
        if dry_run:
            return self.plan_gc(grace=grace, log_age=log_age), None
        with _translate_store_errors(self.layout):
            self.layout.store.mkdir(parents=True, exist_ok=True)
            with store_barrier(self.layout.store, self.manifests.lock_timeout, exclusive=True):
                plan = self.plan_gc(grace=grace, log_age=log_age)
                result = gc.execute(self.layout, plan, grace)
        self.oplog.write("gaia_cas.gc", f"gc: deleted {result.deleted or 'nothing'}, freed {result.bytes_freed} bytes"
                         f" ({result.bytes_freed / 1048576:.2f} MB), {plan.reachable_objects} objects in use, "
                         f"{plan.young_unreferenced} unreferenced but within the grace period")
        return plan, result

    def promote(self, name: str, selector: str, channel: str, *, link: str | None = None,
                reason: str | None = None) -> RollbackResult:
        """Point a channel (e.g. staging, canary) at a version; 'current' is the default channel."""
        from .manifest import check_channel_name

        if channel == "current":
            if link is not None:
                raise InvalidInputError("the current link is set with 'gaia-cas model set MODEL --link PATH'")
            return self.rollback(name, selector, reason=reason)
        check_channel_name(channel)
        with self.claims():  # the channel's link is claimed like a model's
            return self._promote(name, selector, channel, link=link, reason=reason)

    def _promote(self, name: str, selector: str, channel: str, *, link, reason) -> RollbackResult:
        model = self.model(name)
        manifest = self.manifest(model)
        target = self.select(manifest, selector)
        if target.broken:
            raise CorruptionError(f"version {target.version} of '{model}' is marked broken by verify; "
                                  "it cannot be promoted")
        wanted_link = normalize_link(link, self.root) if link is not None else None
        link_now = wanted_link or (manifest.channels.get(channel) or {}).get("link") or f"models/{model}/{channel}"
        self.check_link_free(model, channel, link_now)
        self.check_link_locations(manifest)
        check_text(reason, "--reason")
        user, host = clock.who()
        old_link = links.model_links(self.layout, manifest).get(channel)

        def relink(committed: Manifest) -> None:
            self.sync_link(committed)
            if old_link is not None and old_link != links.model_links(self.layout, committed)[channel]:
                links.drop_link(self.layout, old_link)

        with self.writing():
            self.materialize(target.tree)
            with self.manifests.edit(model, on_commit=relink) as manifest:
                chosen = self.select(manifest, selector)
                old = manifest.channels.get(channel)
                before = old["version"] if old else None
                new_link = wanted_link if wanted_link is not None else (old["link"] if old else None)
                changed = before != chosen.version or bool(old and old["link"] != new_link)
                if changed:
                    manifest.channels[channel] = {"version": chosen.version, "link": new_link}
                    record(manifest, "promote", version=chosen.version, before=before, after=chosen.version,
                           at=clock.stamp(clock.now()), user=user, host=host, reason=reason,
                           details={"channel": channel})
        path = str(ingest.artifact_path(self.layout.tree_path(chosen.tree), chosen.name))
        if changed:
            moved = f", link {old_link} -> {links.model_links(self.layout, manifest)[channel]}" \
                if old_link != links.model_links(self.layout, manifest)[channel] else ""
            self.oplog.write("gaia_cas.channel", f"promoted {model} {chosen.version} to {channel} "
                             f"(was {before or '-'}{moved}) by {user}@{host}" + (f" reason={reason!r}" if reason else ""))
        return RollbackResult(model, chosen.version, before, not changed, path)

    def check_link_free(self, model: str, channel: str, link: str) -> None:
        """The link location is valid and no other model or channel owns it."""
        links.check_location(self.layout, link)
        for other in self.models():
            manifest = self.manifest(other) if other != model else self.manifests.read(model)
            for other_channel, other_link in links.model_links(self.layout, manifest).items():
                if other_link == link and (other, other_channel) != (model, channel):
                    owner = f"model '{other}'" if other_channel == "current" else f"channel '{other_channel}' of '{other}'"
                    raise InvalidInputError(f"link path {link!r} is already used by {owner}")

    # -- queries -----------------------------------------------------------------------------

    def select(self, manifest: Manifest, selector: str | None) -> Version:
        """The version a selector names (see :mod:`gaia_cas.versions`); None means current."""
        model = manifest.model
        if selector is None:
            current = manifest.current_version()
            if current is None:
                raise NotFoundError(f"model '{model}' has no current version yet")
            return current
        sel = parse_selector(selector)
        if sel.kind == "previous":
            version = _previous(manifest)
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

    def show(self, name: str, selector: str | None = None) -> tuple[Manifest, Version]:
        manifest = self.manifest(name)
        return manifest, self.select(manifest, selector)

    def status(self) -> Status:
        from datetime import timedelta

        from . import gc

        models = []
        manifests = [self.manifests.read(model) for model in self.models()]
        for manifest in manifests:
            current = manifest.current_version()
            models.append(ModelStatus(manifest.model, manifest.current, len(manifest.versions),
                                      current.size_bytes if current else 0,
                                      sum(v.size_bytes for v in manifest.versions)))
        # Everything no version uses, whatever its age: gc frees it once past the grace period.
        # The same scan of store/objects also gives the object count and bytes.
        logical = sum(m.logical_bytes for m in models)
        try:
            plan = gc.plan_gc(self.layout, self.manifests, self.trees, grace=timedelta(0), log_age=None,
                              already_read=manifests)
        except gc.GcRefusedError:
            # something is unreadable: 'verify' says what; status still answers what it can
            usage = _store_usage(self.layout)
            return Status(models, StoreStatus(usage.objects, usage.total, logical, None,
                                              staging_bytes=usage.staging))
        usage = _store_usage(self.layout, objects=False)
        garbage_objects = sum(d.size for d in plan.doomed if d.kind == "object")
        garbage_trees = min(sum(d.size for d in plan.doomed if d.kind == "tree"), usage.copied_trees)
        used = plan.object_bytes - garbage_objects + usage.copied_trees - garbage_trees
        return Status(models, StoreStatus(
            plan.objects, plan.object_bytes + usage.copied_trees + usage.staging, logical, plan.bytes,
            used_bytes=used, saved_bytes=logical - used, garbage_bytes=garbage_objects + garbage_trees,
            staging_bytes=usage.staging))

    def diff(self, name: str, a: str, b: str):
        """Files added, removed and changed between two versions, and metadata changed."""
        from .diff import diff_versions

        manifest = self.manifest(name)
        return diff_versions(self.trees, manifest.model, self.select(manifest, a), self.select(manifest, b))

    def import_legacy(self, path, *, mapping: dict[str, str] | None = None, dry_run: bool = False,
                      reason: str | None = None, keep_links: bool = False, timezone: str | None = None) -> list:
        """Migrate a copy-per-version layout; see :mod:`gaia_cas.legacy`."""
        from .legacy import import_legacy

        check_text(str(path), "legacy path")
        check_text(reason, "--reason")
        return import_legacy(self, path, mapping=mapping, dry_run=dry_run, reason=reason, keep_links=keep_links,
                             timezone=timezone)

    def export(self, name: str, selector: str | None, output) -> tuple[str, Version, Path]:
        """Write one version (default: current) as a tar: the artifact plus metadata.json.

        Returns the model, the version exported and the archive's path.
        """
        from .archive import export_version

        manifest, version = self.show(name, selector)
        if version.broken:
            raise CorruptionError(f"version {version.version} of '{manifest.model}' is marked broken; not exported")
        with _translate_store_errors(self.layout):
            return manifest.model, version, export_version(self, manifest.model, version, output)

    def import_archive(self, path, name: str, **options) -> DeployResult:
        """Validate an exported tar, then deploy its artifact as the model's next version."""
        from .archive import import_archive

        return import_archive(self, path, name, **options)

    def history(self, name: str) -> list:
        """The model's audit trail, oldest first (append-only: nothing ever rewrites it)."""
        return list(self.manifest(name).history)

    def verify(self, name: str | None = None, *, repair: bool = False, sample: float | None = None,
               reason: str | None = None):
        """Re-hash, check trees and links; see :mod:`gaia_cas.verify`."""
        from .verify import verify

        check_text(reason, "--reason")
        return verify(self, name, repair=repair, sample=sample, reason=reason)

    def logs(self, n: int = 20) -> list[str]:
        if n < 0:
            raise InvalidInputError("-n must be 0 or more")
        return tail(self.layout.logs, n)

    def resolve(self, name: str):
        from .reader import resolve

        return resolve(name, root=self.root)

    # -- helpers -----------------------------------------------------------------------------

    def _own_folders(self) -> dict[str, Path]:
        """The root's folders no source may be, hold or be inside."""
        return {"store/": self.layout.store, "manifests/": self.layout.manifests, "logs/": self.layout.logs}

    def materialize(self, tree_oid: str) -> Path:
        return materialize(self.layout, self.objects, tree_oid)

    def check_complete(self, tree_oid: str) -> None:
        """Every object the tree reaches exists (a gc must not have taken any of them)."""
        if not self.objects.exists(tree_oid):
            raise CorruptionError(f"tree {tree_oid} is missing from the store")
        for _, entry in self.trees.walk(tree_oid):
            if not self.objects.exists(entry.oid):
                raise CorruptionError(f"object {entry.oid} of tree {tree_oid} is missing from the store")

    def link_targets(self, manifest: Manifest) -> dict[str, tuple[str, Version | None]]:
        """Every link the model owns: channel name -> (link path relative to the root, its version)."""
        versions = manifest.channel_versions()
        return {channel: (link, manifest.find(versions[channel]) if channel in versions else None)
                for channel, link in links.model_links(self.layout, manifest).items()}

    def sync_links(self) -> list[str]:
        """Regenerate every link that lags behind its manifest (after a crash); returns the models fixed."""
        fixed = []
        for model in self.models():
            manifest = self.manifest(model)
            stale = False
            for relative, version in self.link_targets(manifest).values():
                target = links.read_link(self.layout, relative)
                wanted = None
                if version is not None and not version.broken:
                    wanted = ingest.artifact_path(self.layout.tree_path(version.tree), version.name)
                if (target is None) != (wanted is None) or (wanted is not None and (
                        os.path.normpath(target) != os.path.normpath(wanted) or not os.path.exists(target))):
                    stale = True
            if stale:
                with self.writing(), self.manifests.edit(model) as fresh:
                    self.sync_link(fresh)  # under the lock, from the manifest as it is now
                fixed.append(model)
        return fixed

    def check_link_locations(self, manifest: Manifest) -> None:
        """Before a change that will regenerate links: every link of the model can be written."""
        for link, _ in self.link_targets(manifest).values():
            links.check_location(self.layout, link)

    def sync_link(self, manifest: Manifest) -> None:
        """Regenerate the model's links (current and every channel) from the manifest just committed."""
        for channel, (link, version) in self.link_targets(manifest).items():
            try:
                if version is None or version.broken:  # a broken version is never served
                    links.drop_link(self.layout, link)
                    continue
                tree_dir = self.materialize(version.tree)
                links.point_link(self.layout, link, ingest.artifact_path(tree_dir, version.name))
            except (OSError, InvalidInputError) as exc:
                # The manifest is already committed: say so, rather than report the change as failed.
                fix = (f"'gaia-cas rollback {manifest.model} {manifest.current}'" if manifest.current
                       else "any later change")
                raise StoreError(
                    f"{manifest.model} is committed ({channel} {version.version if version else 'none'}), but its "
                    f"link {link} could not be updated: {getattr(exc, 'strerror', None) or exc}; {fix} regenerates it"
                ) from exc

    @contextmanager
    def writing(self):
        """Translate store-side OS errors, and hold the store barrier shared (gc waits)."""
        with _translate_store_errors(self.layout):
            self.layout.store.mkdir(parents=True, exist_ok=True)
            refusal = self.layout.symlink_in_store()  # never write through a symlink under store/
            if refusal is not None:
                raise StoreError(refusal)
            with store_barrier(self.layout.store, self.manifests.lock_timeout, exclusive=False):
                yield

    # -- S3 remote: one-line delegations to gaia_cas.remotes and gaia_cas.transfer ----------------

    def add_remote(self, name: str, url: str, *, endpoint: str | None = None, region: str | None = None):
        """Register ``s3://BUCKET[/PREFIX]`` as remote ``name`` after probing it; (Remote, is_default)."""
        from . import remotes
        return remotes.add(self, name, url, endpoint=endpoint, region=region)

    def remotes(self):
        """(default remote name, {name: Remote})."""
        from . import remotes
        return remotes.load(self)

    def push(self, name: str | None = None, *, remote: str | None = None) -> list:
        """Upload versions the remote lacks and merge the manifest; one PushResult per model."""
        from . import transfer
        return transfer.push(self, name, remote=remote)

    def pull(self, name: str, selector: str | None = None, *, remote: str | None = None) -> list:
        """Fetch a remote version (verified) and, without ``selector``, make it current; PullResults."""
        from . import transfer
        return transfer.pull(self, name, selector, remote=remote)

    def sync(self, name: str | None = None, *, remote: str | None = None, watch: bool = False,
             interval: float = 5.0, report=None) -> list:
        """Pull every model (or one) whose remote manifest changed; ``watch`` keeps following."""
        from . import transfer
        return transfer.sync(self, name, remote=remote, watch=watch, interval=interval, report=report)

    def rollback_remote(self, name: str, selector: str, *, remote: str | None = None, reason: str | None = None):
        """Move the remote's current to an existing version by compare-and-swap; a RemoteRollback."""
        from . import transfer
        return transfer.rollback_remote(self, name, selector, remote=remote, reason=reason)

    def verify_remote(self, name: str | None = None, *, remote: str | None = None, sample: float | None = None):
        """Re-hash, on the remote, what its manifests reach; a VerifyReport (nothing is changed)."""
        from . import remote_verify
        return remote_verify.verify_remote(self, name, remote=remote, sample=sample)

    def gc_remote(self, *, remote: str | None = None, grace=None, dry_run: bool = False):
        """Delete what no remote manifest reaches, older than ``grace`` (default 24 h); a RemoteGcPlan."""
        from . import remote_gc
        return remote_gc.gc_remote(self, remote, grace=remote_gc.DEFAULT_GRACE if grace is None else grace,
                                   dry_run=dry_run)


class _translate_store_errors:
    """Turn OS errors of the store side (disk full, read-only, permissions) into StoreError."""

    def __init__(self, layout: Layout):
        self.layout = layout

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, GaiaCasError) or not isinstance(exc, OSError):
            return False
        where = f" ({exc.filename})" if exc.filename else ""
        raise StoreError(f"cannot write to the store in {self.layout.root}: {exc.strerror or exc}{where}") from exc


def _previous(manifest: Manifest) -> str | None:
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
