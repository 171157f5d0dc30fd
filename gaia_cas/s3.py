"""The S3 backends of the storage seam: objects and manifests in a bucket, changed without locks.

    s3://BUCKET/PREFIX/
      objects/ab/cdef...        the same bytes as store/objects/ab/cdef... of a local root
      recipes/ab/cdef...        a large file kept as chunks (objects): the same bytes as store/recipes/...
      manifests/<model>.msgpack the same schema as manifests/<model>.msgpack
      quarantine/<oid>          corrupt objects moved aside (never served)
      .probe/<random>           remote add's test of conditional writes (removed after it)

Any S3 engine works (AWS, Ceph RGW, MinIO, R2) through obstore; credentials come only from the
usual AWS sources (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, a
profile's environment), never from a file gaia-cas writes.

A manifest changes only by compare-and-swap (docs/design.md, S3 remote): a conditional PUT,
``If-None-Match: *`` to create, ``If-Match: <etag>`` to update; 412 means someone else
committed first. A 409 ``ConditionalRequestConflict`` (two conditional writes in flight) is
retried after a jittered backoff. Each swap carries an operation id in its last history event,
so a write whose response was lost -- the retry then meets its own write as a 412 -- is
recognised as ours on re-read instead of being reported as lost.

Every object read from a bucket is checked against its oid before its bytes reach the caller
(:class:`VerifiedReader` raises at the end of a stream whose hash differs, before the last read
returns), or before :meth:`S3ObjectStore.stage` returns (the staging's own hash, compared), so a
corrupt or truncated download never enters a local store.

obstore is imported here only, and this module only by the commands that talk to a remote: the
local tool neither needs it nor pays for it at start-up.
"""

from __future__ import annotations

import io
import os
import random
import re
import time
from collections import namedtuple

from .errors import CorruptionError, GaiaCasError, InvalidInputError
from .names import check_model_name, check_oid, is_oid
from .storage import BaseManifestStore, BaseObjectStore, BaseStaging, StaleTokenError

MANIFEST_SUFFIX = ".msgpack"
CONNECT_TIMEOUT = "5s"
REQUEST_TIMEOUT = "120s"  # one request; a large object streams in parts, each its own request
MAX_RETRIES = 3
RETRY_TIMEOUT_S = 20
CONFLICT_RETRIES = 8  # 409 ConditionalRequestConflict: another conditional write was in flight
STREAM_CHUNK = 8 << 20
STAGE_CHUNK = 1 << 20  # a download into staging: chunks the size of its buffer (objects.CHUNK)


class RemoteError(GaiaCasError):
    """The remote could not be reached or refused the request (one line, never a secret)."""


Location = namedtuple("Location", "bucket prefix")

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def parse_url(url: str) -> Location:
    """``s3://BUCKET[/PREFIX]`` -> (bucket, prefix ending in '/' or empty)."""
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise InvalidInputError(f"invalid remote URL {url!r}: use s3://BUCKET[/PREFIX]")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise InvalidInputError(f"invalid bucket name {bucket!r} in {url!r}: 3-63 lowercase letters, digits, '.' or '-'")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") or "\\" in p or "\0" in p for p in parts):
        raise InvalidInputError(f"invalid prefix in {url!r}: no '.', '..', backslash or NUL parts")
    return Location(bucket, "".join(p + "/" for p in parts))


def check_endpoint(endpoint: str | None) -> str | None:
    if endpoint is None:
        return None
    if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[^\s]*)?", endpoint or ""):
        raise InvalidInputError(f"invalid endpoint {endpoint!r}: use http://HOST[:PORT] or https://HOST[:PORT]")
    return endpoint.rstrip("/")


def connect(bucket: str, *, endpoint: str | None = None, region: str | None = None):
    """An obstore S3Store with bounded connect and request times (a down endpoint fails in
    seconds, not minutes). Credentials: the AWS environment only."""
    from datetime import timedelta

    from obstore.store import S3Store

    options = {"connect_timeout": CONNECT_TIMEOUT, "timeout": REQUEST_TIMEOUT}
    config = {}
    if endpoint is not None:
        config["endpoint"] = endpoint
        if endpoint.startswith("http://"):
            options["allow_http"] = True
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    config["region"] = region
    if endpoint is not None:
        config["virtual_hosted_style_request"] = False
    retry = {"max_retries": MAX_RETRIES, "retry_timeout": timedelta(seconds=RETRY_TIMEOUT_S),
             "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2),
                         "base": 2}}
    try:
        return S3Store(bucket, config=config, client_options=options, retry_config=retry)
    except Exception as exc:
        raise RemoteError(f"cannot set up S3 client for bucket {bucket!r}: {_reason(exc)}") from None


# -- errors --------------------------------------------------------------------------------

_STATUS_RE = re.compile(r"status code: (\d{3})([^:<\n]*)")
_CODE_RE = re.compile(r"<Code>([A-Za-z]+)</Code>")


def _status(exc) -> int | None:
    found = _STATUS_RE.search(str(exc))
    return int(found.group(1)) if found else None


def _reason(exc) -> str:
    """One short line about what went wrong: status and S3 error code, never a header or a key."""
    text = str(exc)
    status = _STATUS_RE.search(text)
    code = _CODE_RE.search(text)
    if status:
        return f"HTTP {status.group(1)}{status.group(2).rstrip()}" + (f" ({code.group(1)})" if code else "")
    if "error sending request" in text or "Connection refused" in text or "dns error" in text:
        return "cannot connect (is the endpoint up and reachable?)"
    if "timed out" in text or "Timeout" in text:
        return "timed out"
    first = text.splitlines()[0] if text else type(exc).__name__
    first = re.sub(r"(?i)(signature|credential|x-amz-[a-z-]*|authorization)=?\S*", r"\1=…", first)
    return first[:160]


def describe(exc, where: str) -> RemoteError:
    """A RemoteError for an obstore failure at ``where`` (a bucket and key, or a remote's name)."""
    text = str(exc)
    status = _status(exc)
    code = _CODE_RE.search(text)
    code = code.group(1) if code else ""
    if code == "NoSuchBucket" or "NoSuchBucket" in text:
        return RemoteError(f"{where}: the bucket does not exist")
    if status in (401, 403) or code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied") \
            or type(exc).__name__ in ("PermissionDeniedError", "UnauthenticatedError"):
        return RemoteError(f"{where}: access denied ({code or status or 'unauthenticated'}): check the AWS "
                           "credentials in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE)")
    return RemoteError(f"{where}: {_reason(exc)}")


def _kind(exc) -> str:
    """How a failed request is handled: 'stale' (412), 'conflict' (409), 'missing' (404),
    'transient' (no answer: retry), or 'fatal'."""
    name = type(exc).__name__
    if name in ("AlreadyExistsError", "PreconditionError"):
        return "stale"
    status = _status(exc)
    if status == 412:
        return "stale"
    if status == 409:
        return "conflict"
    if isinstance(exc, FileNotFoundError) and "NoSuchBucket" not in str(exc):
        return "missing"
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return "transient"
    if status is None and name == "GenericError" and ("error sending request" in str(exc) or "timed out" in str(exc)):
        return "transient"
    return "fatal"


# -- objects -------------------------------------------------------------------------------

class ChunkReader(io.RawIOBase):
    """obstore's chunks of one download as a binary stream (``readinto``), refusing more than
    ``limit`` bytes. Its bytes are not checked here: :class:`VerifiedReader` checks them, or
    the caller compares the hash it computes itself (:meth:`S3ObjectStore.stage`)."""

    def __init__(self, chunks, where: str, limit: int | None = None, *, refusal: str = "refused"):
        self._chunks = iter(chunks)
        self._where = where
        self._limit = limit
        self._refusal = refusal  # what the error says after "larger than LIMIT bytes; "
        self._pending = memoryview(b"")
        self._size = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            if self._done:
                return 0
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._finish()
                return 0
            except Exception as exc:
                raise describe(exc, self._where) from None
            self._pending = memoryview(chunk)
            self._received(self._pending)
            self._size += len(self._pending)
            if self._limit is not None and self._size > self._limit:
                raise CorruptionError(f"{self._where} is larger than {self._limit} bytes; {self._refusal}")
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _received(self, chunk) -> None:
        pass

    def _finish(self) -> None:
        self._done = True


class VerifiedReader(ChunkReader):
    """A download checked against its oid while it is read: the read that would return the end
    of the stream raises CorruptionError instead when the bytes do not hash to ``oid`` (or
    exceed ``limit``). Whatever consumed the earlier chunks (a staging file) is then discarded
    by its own error handling, so no unverified byte is ever installed."""

    def __init__(self, chunks, oid: str, where: str, limit: int | None = None):
        from .objects import new_hasher

        super().__init__(chunks, where, limit)
        self._oid = oid
        self._hasher = new_hasher()

    def _received(self, chunk) -> None:
        self._hasher.update(chunk)

    def _finish(self) -> None:
        self._done = True
        got = self._hasher.hexdigest()
        if got != self._oid:
            raise CorruptionError(f"{self._where} does not match its hash (its bytes hash to {got}); refused")


class S3Staging(BaseStaging):
    """New objects kept aside (in memory, or a temporary file for streams) until ``install()``
    uploads them; leaving without install uploads nothing."""

    def __init__(self, store: "S3ObjectStore"):
        super().__init__(store)  # _staged: oid -> bytes, or an open temporary file for a stream
        self.new_bytes = 0

    def add_stream(self, src, label: str = "the source", buffer=None) -> tuple[str, int]:
        import tempfile

        from .objects import CHUNK, new_hasher

        buffer = buffer or bytearray(CHUNK)
        view = memoryview(buffer)
        hasher = new_hasher()
        spool = tempfile.SpooledTemporaryFile(max_size=8 << 20)
        size = 0
        while n := src.readinto(buffer):
            hasher.update(view[:n])
            spool.write(view[:n])
            size += n
        oid = hasher.hexdigest()
        if oid in self._staged:
            spool.close()
        else:
            spool.seek(0)
            self._staged[oid] = spool
        return oid, size

    def install(self) -> int:
        new = 0
        for oid, data in list(self._staged.items()):
            if self.store.exists(oid):
                continue
            if not isinstance(data, bytes):
                data.seek(0)
                data = data.read()
            self.store.upload(oid, data)
            self.new_bytes += len(data)
            new += 1
        self.discard()
        return new

    def discard(self) -> None:
        for data in self._staged.values():
            if not isinstance(data, bytes):
                data.close()
        self._staged.clear()


class S3ObjectStore(BaseObjectStore):
    """Objects under ``PREFIX/objects/<oid[:2]>/<oid[2:]>``.

    refresh: S3 has no mtime to set. An object's age on the remote is its upload time
    (LastModified), so refresh only checks the object is there; remote gc's grace period (at
    least 24 h) is what keeps an in-flight push's objects, uploaded minutes before its manifest.
    """

    def __init__(self, client, prefix: str = "", *, name: str | None = None):
        self.client = client
        self.prefix = prefix
        self.name = name or "the remote"

    def key(self, oid: str) -> str:
        check_oid(oid)
        return f"{self.prefix}objects/{oid[:2]}/{oid[2:]}"

    def where(self, oid: str) -> str:
        return f"object {oid} on {self.name}"

    def exists(self, oid: str) -> bool:
        import obstore

        key = self.key(oid)
        try:
            obstore.head(self.client, key)
            return True
        except Exception as exc:
            if _kind(exc) == "missing":
                return False
            raise describe(exc, self.where(oid)) from None

    def _get(self, oid: str):
        import obstore

        key = self.key(oid)
        try:
            return obstore.get(self.client, key)
        except Exception as exc:
            if _kind(exc) == "missing":
                raise CorruptionError(f"{self.where(oid)} is missing") from None
            raise describe(exc, self.where(oid)) from None

    def read(self, oid: str, limit: int) -> bytes:
        result = self._get(oid)
        if result.meta["size"] > limit:
            raise CorruptionError(f"{self.where(oid)} is larger than {limit} bytes; refused")
        reader = VerifiedReader(result.stream(min_chunk_size=STREAM_CHUNK), oid, self.where(oid), limit)
        return io.BufferedReader(reader, STREAM_CHUNK).read()

    def open(self, oid: str):
        """A stream of the object's verified bytes: reading it to the end raises CorruptionError
        if they do not hash to ``oid``."""
        result = self._get(oid)
        return VerifiedReader(result.stream(min_chunk_size=STREAM_CHUNK), oid, self.where(oid))

    def stage(self, oid: str, staging, size: int | None = None, buffer=None) -> int:
        """Download the object into ``staging`` (``add_stream``), checked against its oid by the
        hash the staging computes as it writes -- one hash per byte, not two. Refused, with
        CorruptionError naming it, when its bytes hash to anything else or when it is not the
        ``size`` its (verified) tree gives: then before a byte is read, and never more than
        ``size`` bytes are. What was staged is the staging's to discard. Returns the size."""
        result = self._get(oid)
        where = self.where(oid)
        if size is not None and result.meta["size"] != size:
            raise CorruptionError(f"{where} does not match its hash (it is {result.meta['size']} bytes, its tree "
                                  f"says {size}); refused")
        reader = ChunkReader(result.stream(min_chunk_size=STAGE_CHUNK), where, size,
                             refusal="its tree gives that size; refused")
        got, staged = staging.add_stream(reader, where, buffer)
        if got != oid:
            raise CorruptionError(f"{where} does not match its hash (its bytes hash to {got}); refused")
        return staged

    def size(self, oid: str) -> int | None:
        import obstore

        try:
            return obstore.head(self.client, self.key(oid))["size"]
        except Exception as exc:
            if _kind(exc) == "missing":
                return None
            raise describe(exc, self.where(oid)) from None

    def upload(self, oid: str, data) -> None:
        """Put one object whose bytes the caller checked against ``oid`` (bytes or a local path).
        Unconditional: the key is the hash of the content, so an overwrite writes the same bytes
        (and a large file can then go up in parts)."""
        import obstore
        from pathlib import Path

        try:
            obstore.put(self.client, self.key(oid), Path(data) if isinstance(data, (str, os.PathLike)) else data,
                        chunk_size=16 << 20)
        except Exception as exc:
            raise describe(exc, self.where(oid)) from None

    def staging(self) -> S3Staging:
        return S3Staging(self)

    def oids(self):
        """Every oid under objects/ (one paginated listing)."""
        for oid, _, _ in self.inventory():
            yield oid

    def head(self, oid: str):
        """The object's (size, upload time) on the remote, or None when it is not there."""
        return _head(self.client, self.key(oid), self.where(oid))

    def inventory(self):
        """(oid, size, upload time) of every object under objects/, from one paginated listing."""
        return _fanout_listing(self.client, f"{self.prefix}objects/", f"{self.name} (listing objects)")

    @property
    def recipes(self) -> "S3RecipeStore":
        """The recipes of the files this remote keeps as chunks (gaia_cas.remote_chunks)."""
        return S3RecipeStore(self.client, self.prefix, name=self.name)

    def delete(self, oid: str) -> bool:
        import obstore

        if not self.exists(oid):
            return False
        try:
            obstore.delete(self.client, self.key(oid))
        except Exception as exc:
            raise describe(exc, self.where(oid)) from None
        return True

    def quarantine(self, oid: str) -> str | None:
        """Copy the object to ``PREFIX/quarantine/<oid>`` and delete it; where it went, or None."""
        import obstore

        if not self.exists(oid):
            return None
        target = f"{self.prefix}quarantine/{oid}"
        try:
            obstore.copy(self.client, self.key(oid), target)
            obstore.delete(self.client, self.key(oid))
        except Exception as exc:
            raise describe(exc, self.where(oid)) from None
        return target

    def refresh(self, oid: str) -> None:
        if not self.exists(oid):
            raise CorruptionError(f"{self.where(oid)} is missing")


def _head(client, key: str, where: str):
    """(size, upload time) of ``key``, or None when it is not there."""
    import obstore

    try:
        meta = obstore.head(client, key)
    except Exception as exc:
        if _kind(exc) == "missing":
            return None
        raise describe(exc, where) from None
    return meta["size"], meta["last_modified"]


def _fanout_listing(client, base: str, where: str):
    """(oid, size, upload time) of every ``base<oid[:2]>/<oid[2:]>`` key (others skipped)."""
    import obstore

    try:
        for batch in obstore.list(client, prefix=base, chunk_size=1000):
            for meta in batch:
                rest = meta["path"][len(base):]
                oid = rest.replace("/", "", 1)
                if len(rest) == 33 and rest[2] == "/" and is_oid(oid):
                    yield oid, meta["size"], meta["last_modified"]
    except Exception as exc:
        raise describe(exc, where) from None


def most_chunks(size: int) -> int:
    """The most chunks a file of ``size`` bytes is cut into: each but the last holds at least
    MIN_CHUNK bytes."""
    from .chunking import MIN_CHUNK

    return size // MIN_CHUNK + 1


def recipe_bytes(size: int) -> int:
    """The most bytes the recipe of a file of ``size`` bytes takes: a header of under 96 bytes,
    then at most 40 per chunk (a 2-array of a 32-character string and an integer below 2**32)."""
    return 96 + 40 * most_chunks(size)


class S3RecipeStore:
    """Recipes under ``PREFIX/recipes/<oid[:2]>/<oid[2:]>``, the bytes a local store keeps in
    store/recipes. A recipe is keyed by the oid of the file it describes, not by its own hash,
    so it is trusted no further than its content proves: decoded with limits, its file oid must
    be its key, and whoever rebuilds the file checks every chunk and the whole (a lying recipe
    rebuilds nothing). Put unconditionally: any recipe of a file describes it."""

    def __init__(self, client, prefix: str = "", *, name: str | None = None):
        self.client, self.prefix, self.name = client, prefix, name or "the remote"

    def key(self, oid: str) -> str:
        check_oid(oid)
        return f"{self.prefix}recipes/{oid[:2]}/{oid[2:]}"

    def where(self, oid: str) -> str:
        return f"recipe of file {oid} on {self.name}"

    def get(self, oid: str, size: int | None = None):
        """The recipe of file ``oid`` on the remote, or None when it has none.

        ``size``: the file's size, as its (verified) tree gives it. A recipe is refused before
        its body is read when it is larger than a recipe of that size can be (a few hundred
        bytes of msgpack must not decode into millions of objects), and after decoding when it
        describes another size, lists more chunks than the file holds (each but the last is at
        least MIN_CHUNK bytes) or a chunk longer than MAX_CHUNK (every download of a chunk is
        bounded by one largest chunk)."""
        import obstore

        from .chunking import MAX_CHUNK, MAX_RECIPE_BYTES, decode_recipe

        limit = MAX_RECIPE_BYTES if size is None else min(MAX_RECIPE_BYTES, recipe_bytes(size))
        try:
            result = obstore.get(self.client, self.key(oid))
            if result.meta["size"] > limit:
                raise CorruptionError(f"the {self.where(oid)} is larger than {limit} bytes (a recipe of "
                                      f"{'its file' if size is not None else 'a file'} is at most that); refused")
            data = bytes(result.bytes())
        except CorruptionError:
            raise
        except Exception as exc:
            if _kind(exc) == "missing":
                return None
            raise describe(exc, self.where(oid)) from None
        if len(data) > limit:
            raise CorruptionError(f"the {self.where(oid)} is larger than {limit} bytes; refused")
        recipe = decode_recipe(data, f"the {self.where(oid)}")
        if recipe.oid != oid:
            raise CorruptionError(f"the {self.where(oid)} describes file {recipe.oid} instead; refused")
        if size is not None and recipe.size != size:
            raise CorruptionError(f"the {self.where(oid)} says {recipe.size} bytes, its tree {size}; refused")
        if len(recipe.chunks) > most_chunks(recipe.size):
            raise CorruptionError(f"the {self.where(oid)} lists {len(recipe.chunks)} chunks, more than a file of "
                                  f"{recipe.size} bytes is cut into; refused")
        longest = max(c.length for c in recipe.chunks)
        if longest > MAX_CHUNK:
            raise CorruptionError(f"the {self.where(oid)} lists a chunk of {longest} bytes, larger than the largest "
                                  f"chunk ({MAX_CHUNK}); refused")
        return recipe

    def put(self, recipe) -> int:
        """Upload ``recipe`` (after every chunk it lists: the caller's order); its size in bytes."""
        import obstore

        from .chunking import encode_recipe

        data = encode_recipe(recipe)
        try:
            obstore.put(self.client, self.key(recipe.oid), data, use_multipart=False)
        except Exception as exc:
            raise describe(exc, self.where(recipe.oid)) from None
        return len(data)

    def head(self, oid: str):
        """The recipe's (size, upload time) on the remote, or None when it has none."""
        return _head(self.client, self.key(oid), self.where(oid))

    def inventory(self):
        """(file oid, recipe size, upload time) of every recipe, from one paginated listing."""
        return _fanout_listing(self.client, f"{self.prefix}recipes/", f"{self.name} (listing recipes)")

    def delete(self, oid: str) -> None:
        import obstore

        try:
            obstore.delete(self.client, self.key(oid))
        except Exception as exc:
            if _kind(exc) != "missing":
                raise describe(exc, self.where(oid)) from None


# -- manifests -----------------------------------------------------------------------------

OPERATION = "operation"  # the key, in the last event's details, of a swap's operation id


class S3ManifestStore(BaseManifestStore):
    """Manifests under ``PREFIX/manifests/<model>.msgpack``; the token is the object's ETag
    (quotes stripped: Ceph RGW 16 refuses a quoted ETag in ``If-Match`` on PUT)."""

    def __init__(self, client, prefix: str = "", *, name: str | None = None):
        self.client = client
        self.prefix = prefix
        self.name = name or "the remote"

    def key(self, model: str) -> str:
        return f"{self.prefix}manifests/{check_model_name(model)}{MANIFEST_SUFFIX}"

    def names(self) -> list[str]:
        import obstore

        base = f"{self.prefix}manifests/"
        names = []
        try:
            for batch in obstore.list(self.client, prefix=base, chunk_size=1000):
                for meta in batch:
                    rest = meta["path"][len(base):]
                    if rest.endswith(MANIFEST_SUFFIX) and "/" not in rest:
                        try:
                            names.append(check_model_name(rest[: -len(MANIFEST_SUFFIX)]))
                        except InvalidInputError:
                            continue  # never build a key from a name we did not validate
        except Exception as exc:
            raise describe(exc, f"{self.name} (listing manifests)") from None
        return sorted(names)

    def snapshot(self, model: str):
        from .manifest import MAX_MANIFEST_BYTES, decode
        from .storage import Snapshot

        import obstore

        key = self.key(model)
        try:
            result = obstore.get(self.client, key)
        except Exception as exc:
            if _kind(exc) == "missing":
                return None
            raise describe(exc, f"manifest of '{model}' on {self.name}") from None
        if result.meta["size"] > MAX_MANIFEST_BYTES:
            raise CorruptionError(f"the manifest of '{model}' on {self.name} is larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            data = bytes(result.bytes())
        except Exception as exc:
            raise describe(exc, f"manifest of '{model}' on {self.name}") from None
        manifest = decode(data, f"{self.name} manifest {model}")
        if manifest.model != model:
            raise CorruptionError(f"the manifest {key} on {self.name} belongs to model {manifest.model!r}")
        return Snapshot(manifest, _token(result.meta["e_tag"]))

    def changed(self, model: str, token) -> bool:
        """Whether the manifest differs from the state ``token`` names: one conditional GET
        (``If-None-Match``), whose 304 carries no body. A missing manifest counts as changed
        only if there was one."""
        import obstore

        if token is None:
            return self.token(model) is not None
        try:
            obstore.get(self.client, self.key(model), options={"if_none_match": f'"{_token(token)}"'})
        except Exception as exc:
            if type(exc).__name__ == "NotModifiedError" or _status(exc) == 304:
                return False
            if _kind(exc) == "missing":
                return True
            raise describe(exc, f"manifest of '{model}' on {self.name}") from None
        return True

    def token(self, model: str) -> str | None:
        import obstore

        try:
            return _token(obstore.head(self.client, self.key(model))["e_tag"])
        except Exception as exc:
            if _kind(exc) == "missing":
                return None
            raise describe(exc, f"manifest of '{model}' on {self.name}") from None

    def send(self, key: str, data: bytes, mode) -> str | None:
        """One conditional PUT; its ETag (None when the engine gave none). Tests wrap this."""
        import obstore

        return obstore.put(self.client, key, data, mode=mode, use_multipart=False).get("e_tag")

    def compare_and_swap(self, model: str, token, manifest):
        from .manifest import encode

        key = self.key(model)
        operation = _stamp_operation(manifest)
        data = encode(manifest)
        mode = "create" if token is None else {"e_tag": _token(token)}  # no None keys for obstore
        conflicts = 0
        attempts = 0
        while True:
            attempts += 1
            try:
                etag = self.send(key, data, mode)
            except Exception as exc:
                kind = _kind(exc)
                if kind == "stale":
                    # Someone else's commit -- or ours, whose response was lost and whose retry
                    # (ours or obstore's) met it: the operation id tells them apart.
                    mine = self._own_write(model, manifest, operation)
                    if mine is not None:
                        return mine
                    raise StaleTokenError(model) from None
                if kind == "conflict" and conflicts < CONFLICT_RETRIES:
                    conflicts += 1
                    time.sleep(random.uniform(0, min(2.0, 0.05 * 2 ** conflicts)))
                    continue
                if kind == "transient" and attempts <= MAX_RETRIES:
                    time.sleep(random.uniform(0, 0.2 * attempts))
                    continue
                raise describe(exc, f"manifest of '{model}' on {self.name}") from None
            return _token(etag) if etag else self.token(model)

    def _own_write(self, model: str, manifest, operation: str | None):
        """The stored token if the stored manifest is the one this swap wrote, else None."""
        if operation is None:
            return None
        snap = self.snapshot(model)
        if snap is None or snap.manifest.generation != manifest.generation:
            return None
        last = next(snap.manifest.events_newest_first(), None)
        if last is not None and last.details.get(OPERATION) == operation:
            return snap.token
        return None


def _token(etag) -> str | None:
    return etag.strip('"') if isinstance(etag, str) else etag


def _stamp_operation(manifest) -> str | None:
    """Give the swap an operation id, kept in its last new event's details (a swap that records
    no event carries none: its lost response cannot be told from someone else's write)."""
    if not manifest.new_events:
        return None
    event = manifest.new_events[-1]
    operation = event.details.get(OPERATION)
    if not isinstance(operation, str):
        operation = os.urandom(8).hex()
        event.details[OPERATION] = operation
    return operation


# -- a remote: both stores on one client -------------------------------------------------------

class Remote(namedtuple("Remote", "name url endpoint region")):
    """A configured remote. ``open()`` connects (obstore is imported then)."""

    __slots__ = ()

    def open(self) -> tuple[S3ObjectStore, S3ManifestStore]:
        location = parse_url(self.url)
        client = connect(location.bucket, endpoint=self.endpoint, region=self.region)
        label = f"remote '{self.name}'"
        return (S3ObjectStore(client, location.prefix, name=label),
                S3ManifestStore(client, location.prefix, name=label))


def probe(remote: Remote) -> None:
    """Check the remote answers, the bucket exists, the credentials work and the engine honours
    conditional writes: a create with ``If-None-Match: *`` twice -- the second must be refused.
    Raises RemoteError with one line otherwise. Leaves nothing behind."""
    import obstore

    location = parse_url(remote.url)
    client = connect(location.bucket, endpoint=remote.endpoint, region=remote.region)
    where = f"remote '{remote.name}' ({remote.url})"
    key = f"{location.prefix}.probe/{os.urandom(8).hex()}"
    try:
        obstore.put(client, key, b"probe", mode="create", use_multipart=False)
    except Exception as exc:
        raise describe(exc, where) from None
    try:
        try:
            obstore.put(client, key, b"again", mode="create", use_multipart=False)
        except Exception as exc:
            if _kind(exc) == "stale":
                return
            raise describe(exc, where) from None
        raise RemoteError(f"{where}: the engine ignores conditional writes (a second create with "
                          "If-None-Match: * was accepted); gaia-cas needs them to change manifests safely")
    finally:
        try:
            obstore.delete(client, key)
        except Exception:
            pass
