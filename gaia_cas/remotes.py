"""Named remotes of a root: where push and pull go.

Kept in ``manifests/.remotes.msgpack`` (a dot name, so never taken for a model), written by
atomic replace under the store-wide settings lock (``repo.claims()``)::

    {"schema": 1, "default": "origin",
     "remotes": {"origin": {"url": "s3://bucket/prefix", "endpoint": None, "region": None}}}

Never a credential: those come only from the AWS environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE). The first remote added is the default.
"""

from __future__ import annotations

import re

from .errors import CorruptionError, InvalidInputError, NotFoundError

REMOTES_FILE = ".remotes.msgpack"
SCHEMA = 1
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def check_remote_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidInputError(f"invalid remote name {name!r}: use lowercase letters, digits, '.', '_' or '-'")
    return name


def _no_credentials(value, what: str) -> None:
    """Refuse ``user:secret@`` in a URL without echoing it: errors are printed and logged."""
    if isinstance(value, str) and "@" in value.split("://", 1)[-1].split("/", 1)[0]:
        raise InvalidInputError(f"{what} holds credentials (user:secret@, not shown); they come only from the "
                                "AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE)")


def _path(repo):
    return repo.layout.manifests / REMOTES_FILE


def load(repo) -> tuple[str | None, dict]:
    """(default name, {name: Remote}) as stored; an absent file means no remote."""
    from .atomic import read_regular
    from .codec import unpack
    from .s3 import Remote, check_endpoint, parse_url

    path = _path(repo)
    try:
        data = read_regular(path, 1 << 20)
    except FileNotFoundError:
        return None, {}
    doc = unpack(data, str(path), max_str=4096, max_array=1000, max_map=1000)
    try:
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("remotes"), dict):
            raise ValueError
        remotes = {}
        for name, entry in doc["remotes"].items():
            check_remote_name(name)
            parse_url(entry["url"])
            check_endpoint(entry.get("endpoint"))
            region = entry.get("region")
            if region is not None and not isinstance(region, str):
                raise ValueError
            remotes[name] = Remote(name, entry["url"], entry.get("endpoint"), region)
        default = doc.get("default")
        if default is not None and default not in remotes:
            raise ValueError
    except (ValueError, TypeError, KeyError, InvalidInputError):
        raise CorruptionError(f"{path} is not a readable list of remotes") from None
    return default, remotes


def _save(repo, default, remotes: dict) -> None:
    from .atomic import write_atomic
    from .codec import pack

    doc = {"schema": SCHEMA, "default": default,
           "remotes": {r.name: {"url": r.url, "endpoint": r.endpoint, "region": r.region}
                       for r in sorted(remotes.values())}}
    write_atomic(_path(repo), pack(doc))


def get(repo, name: str | None = None):
    """The remote called ``name``, or the default one."""
    default, remotes = load(repo)
    if name is None:
        if default is None:
            raise NotFoundError("no remote configured: add one with 'gaia-cas remote add NAME s3://BUCKET[/PREFIX]'")
        name = default
    check_remote_name(name)
    if name not in remotes:
        known = f" (known: {', '.join(sorted(remotes))})" if remotes else " (none configured)"
        raise NotFoundError(f"unknown remote '{name}'{known}")
    return remotes[name]


def add(repo, name: str, url: str, *, endpoint: str | None = None, region: str | None = None, probe: bool = True):
    """Register a remote after probing it once (reachable, bucket there, credentials accepted,
    conditional writes honoured). The first one becomes the default."""
    from .s3 import Remote, check_endpoint, parse_url
    from .s3 import probe as probe_remote

    check_remote_name(name)
    _no_credentials(url, "the remote URL")
    _no_credentials(endpoint, "--endpoint")
    parse_url(url)
    endpoint = check_endpoint(endpoint)
    if region is not None and not re.fullmatch(r"[a-z0-9-]{1,32}", region):
        raise InvalidInputError(f"invalid region {region!r}")
    remote = Remote(name, url, endpoint, region)
    if name in load(repo)[1]:
        raise InvalidInputError(f"remote '{name}' already exists; remove it first ('gaia-cas remote remove {name}')")
    if probe:
        probe_remote(remote)  # before the lock: the network may take seconds
    with repo.claims():
        default, remotes = load(repo)
        if name in remotes:
            raise InvalidInputError(f"remote '{name}' already exists")
        remotes[name] = remote
        _save(repo, default or name, remotes)
    return remote, (default or name) == name


def set_default(repo, name: str):
    with repo.claims():
        _, remotes = load(repo)
        remote = get(repo, name)
        _save(repo, name, remotes)
    return remote


def remove(repo, name: str) -> None:
    with repo.claims():
        default, remotes = load(repo)
        get(repo, name)
        del remotes[name]
        if default == name:
            default = min(remotes) if remotes else None
        _save(repo, default, remotes)
