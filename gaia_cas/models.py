"""Models: registering a model and changing its settings (aliases, default source, link,
default metadata, retention).

Aliases and links are claims across models: each is checked and committed under the store-wide
claims lock (:meth:`gaia_cas.context.Context.claims`), so two concurrent ``model add`` can never
both own one link.
"""

from __future__ import annotations

from pathlib import Path

from . import clock, ingest, links
from .errors import InvalidInputError, NotFoundError, SourceError
from .layout import normalize_link
from .manifest import Manifest, ModelConfig, record
from .names import check_model_name, check_text


def add_model(ctx, name: str, *, aliases: list[str] | None = None, source: str | None = None,
              link: str | None = None, metadata: dict | None = None, reason: str | None = None) -> ModelConfig:
    check_model_name(name)
    with ctx.claims():
        return _add_model(ctx, name, aliases=aliases, source=source, link=link, metadata=metadata, reason=reason)


def _add_model(ctx, name: str, *, aliases, source, link, metadata, reason) -> ModelConfig:
    if ctx.layout.manifest_path(name).exists():
        raise InvalidInputError(f"model '{name}' already exists; change it with 'gaia-cas model set {name} ...'")
    try:
        existing_owner = ctx.model(name)
    except NotFoundError:
        existing_owner = None
    if existing_owner is not None:
        raise InvalidInputError(f"'{name}' is already an alias of model '{existing_owner}'")
    config = _config_from(ctx, ModelConfig(), aliases=aliases or [], source=source, link=link, metadata=metadata)
    _check_config(ctx, name, config)
    return commit_config(ctx, name, config, "model-add", reason, create=True)


def set_model(ctx, name: str, *, aliases: list[str] | None = None, source: str | None = None,
              link: str | None = None, metadata: dict | None = None, keep: int | None = None,
              keep_within: str | None = None, serving_dir: str | None = None,
              reason: str | None = None) -> ModelConfig:
    """Change a model's settings; ``keep``/``keep_within`` set its retention policy;
    ``serving_dir`` the folder of numbered versions for TF Serving/Triton (``''`` drops it)."""
    with ctx.claims():
        return _set_model(ctx, name, aliases=aliases, source=source, link=link, metadata=metadata, keep=keep,
                               keep_within=keep_within, serving_dir=serving_dir, reason=reason)


def _set_model(ctx, name: str, *, aliases, source, link, metadata, keep, keep_within, serving_dir=None,
               reason) -> ModelConfig:
    model = ctx.model(name)
    current = ctx.manifest(model)
    config = _config_from(ctx, current.config, aliases=aliases, source=source, link=link, metadata=metadata)
    if keep is not None or keep_within is not None:
        from .retention import Policy

        policy = Policy.of(current, keep, keep_within or None)  # validates both
        config.retention = {"keep": policy.keep,
                            "keep_within": None if keep_within == "" else policy.keep_within}
    if serving_dir is not None:
        from . import serving_dir as view

        check_text(serving_dir, "--serving-dir")
        config.serving_dir = view.normalize(ctx, model, serving_dir)
        if config.serving_dir:
            view.wanted(current)  # every served version has a number (refused before anything is written)
            view.check_location(ctx, config.serving_dir)
    _check_config(ctx, model, config)
    return commit_config(ctx, model, config, "model-set", reason, create=False)


def _check_config(ctx, model: str, config: ModelConfig) -> None:
    for alias in config.aliases:
        check_model_name(alias)
        if alias == model:
            raise InvalidInputError(f"alias '{alias}' is the model's own name")
    link = config.link or ctx.layout.default_link(model)
    for other in ctx.models():
        if other == model:
            continue
        theirs = ctx.manifests.read(other)
        if other in config.aliases:
            raise InvalidInputError(f"alias '{other}' is already a model name")
        clash = set(config.aliases) & set(theirs.config.aliases)
        if clash:
            raise InvalidInputError(f"alias '{sorted(clash)[0]}' already belongs to model '{other}'")
    ctx.check_link_free(model, "current", link)


def _config_from(ctx, base: ModelConfig, *, aliases, source, link, metadata) -> ModelConfig:
    check_text(source, "--source")
    check_text(link, "--link")
    check_text(metadata, "--meta")
    config = ModelConfig(
        aliases=list(base.aliases), source=base.source, link=base.link,
        metadata=dict(base.metadata), retention=dict(base.retention), serving_dir=base.serving_dir,
    )
    if aliases is not None:
        config.aliases = sorted(dict.fromkeys(aliases))
    if source is not None:
        source_path = Path(source).absolute()
        if not source_path.exists():
            raise SourceError(f"source {source_path} does not exist")
        ingest.refuse_own_folders(source_path, ctx.own_folders())
        config.source = str(source_path)
    if link is not None:
        config.link = normalize_link(link, ctx.root)
    if metadata:
        config.metadata.update(metadata)
    return config


def commit_config(ctx, model: str, config: ModelConfig, action: str, reason, *, create: bool,
                   details: dict | None = None) -> ModelConfig:
    check_text(reason, "--reason")
    user, host = clock.who()
    new_link = config.link or ctx.layout.default_link(model)

    def relink(manifest: Manifest) -> None:
        ctx.sync_link(manifest)
        if old_link != new_link:
            links.drop_link(ctx.layout, old_link)
        if old_view != config.serving_dir:
            from . import serving_dir

            serving_dir.clear(ctx, old_view)  # the folder given up: no numbered version left in it

    with ctx.writing():
        with ctx.manifests.edit(model, create=create, on_commit=relink) as manifest:
            if create and manifest.generation:
                raise InvalidInputError(f"model '{model}' already exists")
            old_link = manifest.config.link or ctx.layout.default_link(model)
            old_view = manifest.config.serving_dir
            manifest.config = config
            record(manifest, action, version=None, before=manifest.current, at=clock.stamp(clock.now()),
                   user=user, host=host, reason=reason, details=details)
    ctx.oplog.write("gaia_cas.model", f"{action} {model}: aliases={config.aliases} source={config.source} "
                     f"link={new_link} metadata={config.metadata} retention={config.retention}"
                     + (f" serving_dir={config.serving_dir}" if config.serving_dir else "") + f" by {user}@{host}"
                     + (f" reason={reason!r}" if reason else ""))
    return config

