"""Per-model manifests: the single source of truth for versions, ``current`` and history.

A manifest is one msgpack map in ``manifests/<model>.msgpack`` (the schema is documented in the
README). It is read without locks -- an atomic rename is the only way it ever changes, so a
reader holds either the old or the new file -- and written only inside :meth:`Manifests.edit`,
which takes the model's lock, re-reads the file under it, lets the caller change the manifest,
checks that every tree a new version names is complete in the store, bumps the generation and
commits by atomic replace. Decoding is strict: explicit size limits, no duplicate keys, every
field type-checked, every oid and name validated before anything uses it.
"""

from __future__ import annotations

import operator
import re

from .codec import (DOC_LIMITS, MAX_BIN, ROW_LIMITS, array_header_size, array_length, array_offsets, check_value,
                    pack, pack_map, pack_rows, unpack)
from .errors import CorruptionError, InvalidInputError
from .layout import check_link
from .names import check_model_name, is_oid
from .versions import parse_version

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the import typing costs at start-up
if TYPE_CHECKING:
    from typing import Any
    from datetime import datetime

SCHEMA = 1
_VERSION_NUMBER = re.compile(r"(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})")  # as stored: X.Y.Z
MAX_MANIFEST_BYTES = MAX_BIN  # a whole manifest file, as read back


class _Record:
    """A mutable record compared and printed field by field, as a dataclass would be.

    The records on every command's path are written out by hand: building them with
    ``dataclasses`` costs about 9 ms of start-up (the module, ``inspect``, and generating each
    class's methods), a sixth of an unchanged redeploy.
    """

    __slots__ = ()

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    __hash__ = None  # mutable: not hashable, like a dataclass with eq

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def replace(self, **changes):
        """A copy with some fields changed (``dataclasses.replace``)."""
        unknown = set(changes).difference(self.__slots__)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {sorted(unknown)[0]!r}")
        values = {name: getattr(self, name) for name in self.__slots__}
        values.update(changes)
        return type(self)(**values)


class ModelConfig(_Record):
    __slots__ = ("aliases", "source", "link", "metadata", "retention", "serving_dir")

    def __init__(self, aliases: list[str] | None = None, source: str | None = None, link: str | None = None,
                 metadata: dict[str, Any] | None = None, retention: dict[str, Any] | None = None,
                 serving_dir: str | None = None):  # gaia_cas/serving_dir.py; relative to the root
        self.aliases = aliases if aliases is not None else []
        self.source = source
        self.link = link
        self.metadata = metadata if metadata is not None else {}
        self.retention = retention if retention is not None else {}
        self.serving_dir = serving_dir


class Version(_Record):
    __slots__ = ("version", "deployment_id", "created_at", "tree", "artifact", "name", "size_bytes", "file_count",
                 "format", "metadata", "reason", "user", "host", "source", "pinned", "broken")

    def __init__(self, version: str, deployment_id: str, created_at: str, tree: str,
                 artifact: str,  # "directory" | "file"
                 name: str | None,  # file name of a file artifact
                 size_bytes: int, file_count: int, format: str, metadata: dict[str, Any] | None = None,
                 reason: str | None = None, user: str | None = None, host: str | None = None,
                 source: str | None = None, pinned: bool = False,
                 broken: bool = False):  # set by 'verify --repair' when objects it needs are corrupt or missing
        self.version = version
        self.deployment_id = deployment_id
        self.created_at = created_at
        self.tree = tree
        self.artifact = artifact
        self.name = name
        self.size_bytes = size_bytes
        self.file_count = file_count
        self.format = format
        self.metadata = metadata if metadata is not None else {}
        self.reason = reason
        self.user = user
        self.host = host
        self.source = source
        self.pinned = pinned
        self.broken = broken

    @property
    def size_mb(self) -> float:
        return round(self.size_bytes / (1024 * 1024), 2)

    @property
    def label(self) -> str:
        """The old layout's folder name, e.g. ``v1.4.0_20250716_202612``."""
        return f"v{self.version}_{self.deployment_id}"


class Event(_Record):
    __slots__ = ("generation", "at", "action", "version", "before", "after", "user", "host", "reason", "details")

    def __init__(self, generation: int, at: str, action: str, version: str | None, before: str | None,
                 after: str | None, user: str | None = None, host: str | None = None, reason: str | None = None,
                 details: dict[str, Any] | None = None):
        self.generation = generation
        self.at = at
        self.action = action
        self.version = version
        self.before = before
        self.after = after
        self.user = user
        self.host = host
        self.reason = reason
        self.details = details if details is not None else {}


class Manifest:
    """One model's manifest in memory.

    The history is append-only, so it is kept as the bytes it was stored as and decoded only
    when someone reads it: a rollback at 10,000 versions neither decodes nor re-encodes the
    10,000 events before it -- it appends one. New events go to ``new_events`` (see
    :func:`record`); ``history`` is the committed events followed by the new ones.
    """

    def __init__(self, model: str, config: ModelConfig | None = None, versions: list[Version] | None = None,
                 current: str | None = None, highest: str | None = None, generation: int = 0,
                 history: list[Event] | None = None, channels: dict[str, dict[str, Any]] | None = None):
        self.model = model
        self.config = config if config is not None else ModelConfig()
        self._versions: list[Version] | None = list(versions or [])
        # The versions as decoded: they were read under the limits encode() checks, so only
        # versions added or replaced since need checking before the next commit.
        self._decoded: list[Version] = []
        self._versions_stored: bytes | None = None  # the stored rows, until someone needs objects
        self._version_rows: list | None = None  # those rows unpacked, checked only in outline
        # The stored index: every version's number, and where its row starts in the stored bytes
        # (one more offset marks the end). With it, a lookup unpacks one row, not 10,000.
        self._version_index: list[str] | None = None
        self._version_offsets: list[int] | None = None
        self.current = current
        self.highest = highest
        self.generation = generation
        # Named pointers besides current, e.g. {"staging": {"version": "1.2.0", "link": None}}
        self.channels: dict[str, dict[str, Any]] = channels if channels is not None else {}
        self.new_trees: set[str] = set()  # trees added during an edit: checked complete before the commit
        self.new_events: list[Event] = []
        self._history: list[Event] | None = list(history or [])
        self._history_stored: bytes | None = None  # committed events, as stored, until decoded
        self._history_rows: list | None = None  # those events unpacked but not yet validated
        self._history_origin = "manifest"

    @property
    def versions(self) -> list[Version]:
        """Every version, oldest first. Reading this decodes them all; ``find`` does not."""
        if self._versions is None:
            origin = self._history_origin
            values = _records(self._unpacked_versions(), list(_VERSION_FIELDS), _VERSION_FIELDS,
                              f"{origin} versions", ("pinned", "broken"))  # one pass, signature cache
            versions = [_version_from_values(v, i, origin) for i, v in enumerate(values)]
            if self._version_index is not None and [v.version for v in versions] != self._version_index:
                raise CorruptionError(f"{origin} versions disagree with its index of version numbers")
            if self._version_offsets is not None:
                actual = array_offsets(self._versions_stored, f"{origin} versions", len(versions), **ROW_LIMITS)
                if actual != self._version_offsets:
                    raise CorruptionError(f"{origin} versions disagree with its index of row offsets")
            self._versions = versions
            self._decoded = list(versions)
            self._drop_stored_versions()  # objects may change now: re-encode
        return self._versions

    @versions.setter
    def versions(self, value: list[Version]) -> None:
        self._versions = list(value)
        self._drop_stored_versions()

    def _drop_stored_versions(self) -> None:
        self._versions_stored = self._version_rows = self._version_index = self._version_offsets = None

    def _unpacked_versions(self) -> list:
        if self._version_rows is None:
            self._version_rows = _version_stream(self._versions_stored, self._history_origin)
        return self._version_rows

    def stored_versions(self) -> tuple[bytes, list[int] | None]:
        """The versions as stored -- the array of rows -- and where each row starts in it."""
        if self._versions is None:
            return self._versions_stored, self._version_offsets
        return pack_rows(list(map(_version_row, self._versions)))

    @property
    def history(self) -> list[Event]:
        if self._history is None:
            self._history = _decode_events(self._history_stored, self._history_origin)
        return self._history + self.new_events

    def events_newest_first(self):
        """The history from the latest event back, decoding rows only as far as the caller reads."""
        yield from reversed(self.new_events)
        if self._history is not None:
            yield from reversed(self._history)
            return
        if self._history_rows is None:  # unpacked once, validated row by row as they are read
            self._history_rows = _event_stream(self._history_stored, self._history_origin)
        for row in reversed(self._history_rows):
            (values,) = _records([row], list(_EVENT_FIELDS), _EVENT_FIELDS, f"{self._history_origin} history",
                                 ("details",))
            yield Event(*values)

    def stored_history(self) -> bytes:
        """The committed events encoded as a stream of rows (reusing the stored bytes)."""
        if self._history_stored is not None:
            return self._history_stored
        return b"".join(pack(_event_row(e)) for e in self._history)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        keys = ("model", "config", "versions", "current", "highest", "generation", "history", "channels")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def __repr__(self) -> str:
        return (f"Manifest(model={self.model!r}, current={self.current!r}, "
                f"versions={len(self.version_numbers())}, generation={self.generation})")

    def find(self, version: str) -> Version | None:
        """The version numbered ``version``. Without decoding every version when they are still
        stored: the one found is then a copy -- change versions through ``versions``."""
        if self._versions is None:
            if self._version_offsets is not None and self._version_rows is None:
                try:
                    i = self._version_index.index(version)
                except ValueError:
                    return None
                return _indexed_version(self._versions_stored, self._version_offsets, i, version,
                                        self._history_origin)
            for i, row in enumerate(self._unpacked_versions()):
                if row[0] == version:
                    return _version_from_row(row, i, self._history_origin)
            return None
        for v in self._versions:
            if v.version == version:
                return v
        return None

    def version_numbers(self) -> list[str]:
        if self._versions is None:
            if self._version_index is not None:
                return list(self._version_index)
            return [row[0] for row in self._unpacked_versions()]
        return [v.version for v in self._versions]

    def current_version(self) -> Version | None:
        return self.find(self.current) if self.current else None

    def channel_versions(self) -> dict[str, str]:
        """Channel name -> version, including 'current'."""
        result = {name: ch["version"] for name, ch in self.channels.items()}
        if self.current:
            result["current"] = self.current
        return result

    def assigned(self) -> set[str]:
        """Every version number ever given out, including those cleaned up since."""
        numbers = set(self.version_numbers())
        numbers.update(e.version for e in self.history if e.version and e.action in ("deploy", "import"))
        return numbers


def moment(text: str) -> datetime:
    """A stored ISO time as an aware datetime. An unreadable one counts as the newest possible,
    so every age rule (retention, gc's grace) errs on the side of keeping."""
    try:
        from datetime import datetime, timezone  # only listing and retention compare times

        value = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return datetime.max.replace(tzinfo=timezone.utc)
    return value if value.tzinfo is not None else value.astimezone()


# -- codec -----------------------------------------------------------------------------------

_VERSION_FIELDS = {
    "version": str, "deployment_id": str, "created_at": str, "tree": str, "artifact": str,
    "name": (str, type(None)), "size_bytes": int, "file_count": int, "format": str,
    "metadata": dict, "reason": (str, type(None)), "user": (str, type(None)),
    "host": (str, type(None)), "source": (str, type(None)), "pinned": bool, "broken": bool,
}
_EVENT_FIELDS = {
    "generation": int, "at": str, "action": str, "version": (str, type(None)),
    "before": (str, type(None)), "after": (str, type(None)), "user": (str, type(None)),
    "host": (str, type(None)), "reason": (str, type(None)), "details": dict,
}
_CONFIG_FIELDS = {
    "aliases": list, "source": (str, type(None)), "link": (str, type(None)),
    "metadata": dict, "retention": dict, "serving_dir": (str, type(None)),
}


_version_row = operator.attrgetter(*_VERSION_FIELDS)
_event_row = operator.attrgetter(*_EVENT_FIELDS)


def check_encodable(manifest: Manifest) -> None:
    """Refuse, with a one-line error naming the field, any value the decoder would refuse.

    Called by :func:`encode` before a byte is written: a manifest that cannot be read back
    bricks its model (and gc refuses store-wide). Versions decoded from the stored manifest
    already passed these limits; only those added or replaced since are checked.
    """
    model = manifest.model
    check_value({k: getattr(manifest.config, k) for k in _CONFIG_FIELDS}, f"model '{model}' config")
    check_value(manifest.channels, f"model '{model}' channels")
    if manifest._versions is not None:
        decoded = set(map(id, manifest._decoded))
        for v in manifest._versions:
            if id(v) not in decoded:
                check_value({k: getattr(v, k) for k in _VERSION_FIELDS}, f"version {v.version} of '{model}'")
    for e in manifest.new_events:
        check_value({k: getattr(e, k) for k in _EVENT_FIELDS}, f"the {e.action} event of '{model}'")


def encode(manifest: Manifest) -> bytes:
    check_encodable(manifest)
    rows, offsets = manifest.stored_versions()
    if offsets is None:  # rows read from a manifest written before offsets were stored
        offsets = array_offsets(rows, "versions", len(manifest.version_numbers()), **ROW_LIMITS)
    doc = {
        "schema": SCHEMA,
        "model": manifest.model,
        "generation": manifest.generation,
        "current": manifest.current,
        "highest": manifest.highest,
        "config": {k: getattr(manifest.config, k) for k in _CONFIG_FIELDS},
        # Versions and events are rows named by a header: a 10,000-version manifest then holds no
        # per-row keys, and decodes in a fraction of the time maps would take.
        "version_fields": list(_VERSION_FIELDS),
        # One byte string holding the array of rows: a rollback neither decodes every version
        # into objects nor re-encodes them; it reads the row it needs and writes the bytes back.
        "versions": rows,
        # The index of those rows: numbers in row order, and where each row starts in the byte
        # string (plus where the last ends). A reader that wants one version (a rollback, a
        # server resolving current) finds it here and unpacks that row alone.
        "version_numbers": manifest.version_numbers(),
        "version_offsets": offsets,
        "event_fields": list(_EVENT_FIELDS),
        # The history is one byte string holding a stream of rows: appending an event appends
        # its bytes, and no reader of current or versions has to decode it.
        "history": manifest.stored_history() + b"".join(pack(_event_row(e)) for e in manifest.new_events),
        "channels": manifest.channels,
    }
    for key in ("versions", "history"):
        if len(doc[key]) > MAX_BIN:
            raise InvalidInputError(f"the {key} of '{manifest.model}' would take {len(doc[key])} bytes, over the "
                                    f"limit of {MAX_BIN} bytes a manifest can hold; clean up old versions first")
    data = pack_map(doc)
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidInputError(f"the manifest of '{manifest.model}' would take {len(data)} bytes, over the limit of "
                                f"{MAX_MANIFEST_BYTES} bytes; clean up old versions first")
    return data


def _records(raw: list, header, spec: dict, where: str, optional: tuple) -> list[list]:
    """Rows (with a field-name header) or maps, type-checked, as lists in ``spec``'s order.

    Unknown fields are ignored (a later minor release may add some); a missing required field,
    a wrong type or a malformed row is corruption.
    """
    names = list(spec)
    kinds = [spec[n] for n in names]
    defaults = {"pinned": False, "broken": False, "details": {}}
    if header is None:  # maps: written by hand, or by another producer
        return [[_fields(item, spec, f"{where} #{i}", optional).get(n, defaults.get(n)) for n in names]
                for i, item in enumerate(raw)]
    if not (isinstance(header, list) and all(isinstance(h, str) for h in header)) or len(set(header)) != len(header):
        raise CorruptionError(f"{where} field names are malformed")
    positions = []
    for name in names:
        if name in header:
            positions.append(header.index(name))
        elif name in optional:
            positions.append(None)
        else:
            raise CorruptionError(f"{where} lack the field {name!r}")
    width = len(header)
    same_order = positions == list(range(len(names))) and width == len(names)
    # Rows share a handful of type signatures (which optional fields are None): check a
    # signature field by field once, then recognise it with one C-level tuple comparison.
    valid: set[tuple] = set()
    out = []
    for i, row in enumerate(raw):
        if not isinstance(row, list) or len(row) != width:
            raise CorruptionError(f"{where} #{i} is not a row of {width} fields")
        values = row if same_order else [row[p] if p is not None else defaults[n] for p, n in zip(positions, names)]
        signature = tuple(map(type, values))
        if signature not in valid:
            for value, kind, name in zip(values, kinds, names):
                if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                    raise CorruptionError(f"{where} #{i} field {name!r} has the wrong type")
            valid.add(signature)
        out.append(values)
    return out


def _fields(raw, spec: dict, where: str, optional: tuple = ()) -> dict:
    if not isinstance(raw, dict):
        raise CorruptionError(f"{where} is not a map")
    out = {}
    for key, kind in spec.items():
        if key not in raw:
            if key in optional:
                continue
            raise CorruptionError(f"{where} lacks the field {key!r}")
        value = raw[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CorruptionError(f"{where} field {key!r} has the wrong type")
        out[key] = value
    return out


def decode(data: bytes, origin: str = "manifest") -> Manifest:
    doc = unpack(data, f"{origin} (a manifest)", **DOC_LIMITS)
    if not isinstance(doc, dict):
        raise CorruptionError(f"{origin} is not a readable manifest: not a map")
    schema = doc.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise CorruptionError(f"{origin} has no schema number")
    if schema > SCHEMA:
        raise CorruptionError(f"{origin} uses manifest schema {schema}, newer than this gaia-cas understands ({SCHEMA}); upgrade gaia-cas")
    top = _fields(doc, {
        "model": str, "generation": int, "current": (str, type(None)), "highest": (str, type(None)),
        "config": dict, "versions": (list, bytes), "history": (list, bytes),
    }, origin)
    try:
        check_model_name(top["model"])
    except InvalidInputError:
        raise CorruptionError(f"{origin} names an invalid model {top['model']!r:.80}") from None
    cfg = _fields(top["config"], _CONFIG_FIELDS, f"{origin} config", ("serving_dir",))  # absent before it existed
    for where in ("link", "serving_dir"):
        if cfg.get(where) is not None:
            try:
                check_link(cfg[where])
            except InvalidInputError as exc:
                raise CorruptionError(f"{origin}: {exc}") from None
    if not all(isinstance(a, str) for a in cfg["aliases"]):
        raise CorruptionError(f"{origin} config has a non-text alias")
    lazy = isinstance(top["versions"], bytes) and doc.get("version_fields") == list(_VERSION_FIELDS)
    index = doc.get("version_numbers")
    offsets = rows = None
    if lazy and isinstance(index, list) and _only(index, str):
        # Our own layout with its index: a row is unpacked (and checked in full) only when
        # someone reads that version; reading every version checks the index against the rows.
        offsets = _row_offsets(doc.get("version_offsets", _MISSING), top["versions"], len(index), origin)
        numbers = index
        versions = None
    elif lazy:
        # Our layout without an index (written before the index existed): unpack the rows now
        # but validate and build objects only for the versions someone reads.
        rows = _version_stream(top["versions"], origin)
        width = len(_VERSION_FIELDS)
        for i, row in enumerate(rows):
            if not (isinstance(row, list) and len(row) == width and isinstance(row[0], str)):
                raise CorruptionError(f"{origin} versions #{i} is not a row of {width} fields")
        numbers = [row[0] for row in rows]
        versions = None
    else:
        raw = _version_stream(top["versions"], origin) if isinstance(top["versions"], bytes) else top["versions"]
        values = _records(raw, doc.get("version_fields"), _VERSION_FIELDS, f"{origin} versions", ("pinned", "broken"))
        versions = [_version_from_values(v, i, origin) for i, v in enumerate(values)]
        numbers = [v.version for v in versions]
    seen = set(numbers)
    if len(seen) != len(numbers):
        twice = next(n for i, n in enumerate(numbers) if n in numbers[:i])
        raise CorruptionError(f"{origin} lists version {twice} twice")
    if top["highest"] is not None:
        try:
            parse_version(top["highest"])
        except InvalidInputError:
            raise CorruptionError(f"{origin} has a malformed highest version {top['highest']!r:.40}") from None
    channels = _channels(doc.get("channels", {}), origin, seen)
    manifest = Manifest(
        model=top["model"], config=ModelConfig(**cfg), versions=versions or [], current=top["current"],
        highest=top["highest"], generation=top["generation"], channels=channels,
    )
    manifest._decoded = list(manifest._versions)
    if lazy:
        manifest._versions, manifest._versions_stored, manifest._version_rows = None, top["versions"], rows
        if offsets is not None:
            manifest._version_index, manifest._version_offsets = list(numbers), offsets
    header = doc.get("event_fields")
    if isinstance(top["history"], bytes) and header == list(_EVENT_FIELDS):
        manifest._history, manifest._history_stored = None, top["history"]  # decoded when read
        manifest._history_origin = origin
    else:
        raw = _event_stream(top["history"], origin) if isinstance(top["history"], bytes) else top["history"]
        manifest._history = [Event(*values) for values in
                             _records(raw, header, _EVENT_FIELDS, f"{origin} history", ("details",))]
    if manifest.current is not None and manifest.current not in seen:
        raise CorruptionError(f"{origin} marks {manifest.current} current, but has no such version")
    manifest._history_origin = origin
    return manifest


_MISSING = object()


def _only(values: list, kind: type) -> bool:
    """Every value is exactly of ``kind`` (so no bool passes for an int); one pass in C."""
    return set(map(type, values)) <= {kind}


def _row_offsets(stored, rows: bytes, count: int, origin: str) -> list[int]:
    """The stored offsets of ``count`` rows, checked in outline: one per row plus the end, from
    just after the array header to the end of ``rows``. A wrong offset in between shows when
    its row is unpacked, or when every version is read. Without stored offsets (manifests
    written before them), they are found by skipping through the rows."""
    if stored is _MISSING:
        return array_offsets(rows, f"{origin} versions", count, **ROW_LIMITS)
    if not (isinstance(stored, list) and len(stored) == count + 1 and _only(stored, int)
            and stored[0] == array_header_size(count) and stored[-1] == len(rows)
            and array_length(rows) == count):
        raise CorruptionError(f"{origin} version offsets do not fit its {count} version rows")
    return stored


def _version_stream(data: bytes, origin: str) -> list:
    rows = unpack(data, f"{origin} versions", **ROW_LIMITS)
    if not isinstance(rows, list):
        raise CorruptionError(f"{origin} versions are not a list")
    return rows


def _indexed_version(data: bytes, offsets: list[int], i: int, number: str, origin: str) -> Version:
    """Version ``i`` of stored rows, unpacked alone; it must carry the number the index gave it."""
    row = unpack(data[offsets[i]:offsets[i + 1]], f"{origin} versions #{i}", **ROW_LIMITS)
    width = len(_VERSION_FIELDS)
    if not (isinstance(row, list) and len(row) == width):
        raise CorruptionError(f"{origin} versions #{i} is not a row of {width} fields")
    if row[0] != number:
        raise CorruptionError(f"{origin} versions disagree with its index of version numbers at #{i}")
    return _version_from_row(row, i, origin)


def _version_from_row(row: list, i: int, origin: str) -> Version:
    (values,) = _records([row], list(_VERSION_FIELDS), _VERSION_FIELDS, f"{origin} versions", ("pinned", "broken"))
    return _version_from_values(values, i, origin)


def _version_from_values(values: list, i: int, origin: str) -> Version:
    """Check one version's row and build it: every value is checked before anything uses it."""
    version = Version(*values)
    number = version.version
    if not is_oid(version.tree):
        raise CorruptionError(f"{origin} version #{i} has an invalid tree id {version.tree!r:.80}")
    if not _VERSION_NUMBER.fullmatch(number):
        raise CorruptionError(f"{origin} version #{i} has a malformed number {number!r:.40}")
    if version.artifact not in ("directory", "file"):
        raise CorruptionError(f"{origin} version {number} has an unknown artifact kind {version.artifact!r:.40}")
    name = version.name
    if name is not None and ("/" in name or name in ("", ".", "..") or "\0" in name):
        raise CorruptionError(f"{origin} version {number} has an invalid file name {name!r:.80}")
    return version


def _event_stream(data: bytes, origin: str) -> list:
    """The rows of a stored history (a stream of msgpack arrays), unpacked with limits."""
    from .codec import unpack_stream

    return unpack_stream(data, f"{origin} history", **ROW_LIMITS)


def _decode_events(data: bytes, origin: str) -> list[Event]:
    rows = _records(_event_stream(data, origin), list(_EVENT_FIELDS), _EVENT_FIELDS, f"{origin} history",
                    ("details",))
    return [Event(*values) for values in rows]


def _channels(raw, origin: str, versions: set[str]) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise CorruptionError(f"{origin} channels are not a map")
    result = {}
    for name, value in raw.items():
        try:
            check_channel_name(name)
        except InvalidInputError:
            raise CorruptionError(f"{origin} has an invalid channel name {name!r:.40}") from None
        fields = _fields(value, {"version": str, "link": (str, type(None))}, f"{origin} channel {name}")
        if fields["version"] not in versions:
            raise CorruptionError(f"{origin} channel {name} points at {fields['version']!r:.40}, which is no version")
        if fields["link"] is not None:
            try:
                check_link(fields["link"])
            except InvalidInputError as exc:
                raise CorruptionError(f"{origin}: {exc}") from None
        result[name] = fields
    return result


def check_channel_name(name: str) -> str:
    """Channels are named like models; 'current' is the default channel and not stored here."""
    if name == "current":
        raise InvalidInputError("'current' is the default channel; use 'gaia-cas rollback' to move it")
    try:
        return check_model_name(name)
    except InvalidInputError:
        raise InvalidInputError(f"invalid channel name {name!r}: use lowercase letters, digits, '.', '_' or '-'") from None


_CURRENT = object()


def record(manifest: Manifest, action: str, *, version: str | None, before: str | None,
           at: str, user: str | None, host: str | None, reason: str | None, details: dict | None = None,
           after=_CURRENT) -> None:
    """Append a history event; its generation is filled in when the edit commits.

    ``before``/``after`` are the pointer's value around the change: the current version, or for a
    channel move (``details["channel"]``) that channel's version.
    """
    after = manifest.current if after is _CURRENT else after
    manifest.new_events.append(Event(-1, at, action, version, before, after, user, host, reason, dict(details or {})))
