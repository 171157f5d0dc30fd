"""The one way gaia-cas decodes msgpack: explicit limits, no duplicate keys, one error type.

msgpack's own defaults bound lengths by the buffer size; gaia-cas states its limits anyway, so a
manifest, tree or cache declaring a huge string, array or map fails at once instead of
allocating, and a map with a repeated key (two "current" fields, say) is refused, not
silently resolved by last-one-wins.
"""

from __future__ import annotations

import msgpack

from .errors import CorruptionError, InvalidInputError

# -- the limits ------------------------------------------------------------------------------
# One definition, used both ways: every manifest document and row is decoded with these limits,
# and every value is checked against them before it is encoded -- a manifest the decoder then
# refuses would brick its model (and make gc refuse store-wide).
MAX_STR = 1 << 20  # bytes of UTF-8 in one text (a metadata value, a reason, a path)
MAX_BIN = 256 << 20  # bytes of one byte string: a manifest's stored rows and history
MAX_ARRAY = 10_000_000  # elements of one array
MAX_MAP = 1_000_000  # entries of one map inside a row (a version's metadata, an event's details)
MAX_DOC_MAP = 10_000_000  # entries of one map in the manifest document itself
# Nesting of one stored value (a metadata value): far below msgpack's own bounds (packing
# recurses at most 511 levels, unpacking keeps a stack of 1024), and far above any model card.
MAX_DEPTH = 100
INT_MIN, INT_MAX = -(1 << 63), (1 << 64) - 1  # what msgpack can encode: int64 .. uint64

DOC_LIMITS = {"max_str": MAX_STR, "max_bin": MAX_BIN, "max_array": MAX_ARRAY, "max_map": MAX_DOC_MAP}
ROW_LIMITS = {"max_str": MAX_STR, "max_array": MAX_ARRAY, "max_map": MAX_MAP}


class _Unencodable(Exception):
    def __init__(self, problem: str):
        self.problem = problem
        self.path: list[str] = []


def check_value(value, what: str, *, max_depth: int = MAX_DEPTH):
    """Raise a one-line InvalidInputError unless ``value`` encodes within the decode limits.

    ``what`` names the value (e.g. ``"--meta"``, ``"metadata.json of v1.0_20250711_143245"``);
    the error adds the field inside it that is at fault. Returns ``value``.
    """
    try:
        _check(value, max_depth)
    except _Unencodable as exc:
        where = "".join(reversed(exc.path)).lstrip(".")
        if len(where) > 80:
            where = where[:60] + "..."
        field = f" field {where!r}" if where else ""
        raise InvalidInputError(f"{what}{field}: {exc.problem}") from None
    except RecursionError:
        raise InvalidInputError(f"{what}: nested deeper than {max_depth} levels") from None
    return value


def _check(value, depth: int) -> None:
    kind = type(value)
    if kind is str:
        if len(value) * 4 > MAX_STR or not value.isascii():
            try:
                size = len(value.encode("utf-8"))
            except UnicodeEncodeError:
                raise _Unencodable("text that is not valid UTF-8") from None
            if size > MAX_STR:
                raise _Unencodable(f"a text of {size} bytes, over the limit of {MAX_STR} bytes a manifest can hold")
    elif kind is int:
        if not INT_MIN <= value <= INT_MAX:
            digits = str(value)
            shown = digits if len(digits) <= 40 else f"{digits[:20]}... ({len(digits)} digits)"
            raise _Unencodable(f"the integer {shown} is out of range: a manifest holds integers from "
                               "-2**63 to 2**64-1 (give a larger number as text)")
    elif kind is float:
        if value != value or value in (float("inf"), float("-inf")):
            # msgpack would carry it, but every JSON reader of --json output and exports refuses it
            raise _Unencodable(f"the number {value!r}, which is not finite (JSON cannot carry it; give it as text)")
    elif kind is bool or value is None:
        return
    elif kind is dict:
        if depth <= 0:
            raise _Unencodable(f"nested deeper than {MAX_DEPTH} levels")
        if len(value) > MAX_MAP:
            raise _Unencodable(f"a map of {len(value)} entries, over the limit of {MAX_MAP}")
        for key, item in value.items():
            if type(key) is not str:
                raise _Unencodable(f"a map key {key!r:.40} that is not text")
            try:
                _check(key, depth - 1)
                _check(item, depth - 1)
            except _Unencodable as exc:
                exc.path.append(f".{key}")
                raise
    elif kind in (list, tuple):
        if depth <= 0:
            raise _Unencodable(f"nested deeper than {MAX_DEPTH} levels")
        if len(value) > MAX_ARRAY:
            raise _Unencodable(f"a list of {len(value)} elements, over the limit of {MAX_ARRAY}")
        for i, item in enumerate(value):
            try:
                _check(item, depth - 1)
            except _Unencodable as exc:
                exc.path.append(f"[{i}]")
                raise
    elif kind is bytes:
        if len(value) > MAX_BIN:
            raise _Unencodable(f"a byte string of {len(value)} bytes, over the limit of {MAX_BIN}")
    else:
        raise _Unencodable(f"a value of type {kind.__name__}, which a manifest cannot hold")


def _no_duplicate_keys(pairs):
    result = dict(pairs)
    if len(result) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return result


def unpack(data: bytes, what: str, *, max_str: int, max_array: int, max_map: int, max_bin: int = 0):
    try:
        return msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=True,
            object_pairs_hook=_no_duplicate_keys if max_map else None,
            max_str_len=max_str, max_bin_len=max_bin, max_array_len=max_array, max_map_len=max_map,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise CorruptionError(f"{what} does not decode: {exc}") from None


def unpack_stream(data: bytes, what: str, *, max_str: int, max_array: int, max_map: int, max_bin: int = 0) -> list:
    """Every object of a stream of concatenated msgpack values, with the same limits."""
    unpacker = msgpack.Unpacker(
        raw=False, use_list=True, strict_map_key=True, object_pairs_hook=_no_duplicate_keys if max_map else None,
        max_buffer_size=max(len(data), 1), max_str_len=max_str, max_bin_len=max_bin, max_array_len=max_array,
        max_map_len=max_map, max_ext_len=0,
    )
    try:
        unpacker.feed(data)
        items = list(unpacker)
        if unpacker.tell() != len(data):
            raise ValueError("trailing bytes")
        return items
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise CorruptionError(f"{what} does not decode: {exc}") from None


def array_offsets(data: bytes, what: str, count: int, *, max_str: int, max_array: int, max_map: int,
                  max_bin: int = 0) -> list[int]:
    """Where each element of a msgpack array starts in ``data``, plus where the last one ends.

    The array must hold exactly ``count`` elements and nothing may follow it. Elements are
    skipped, not built, so this checks a large array's structure and limits at a fraction of
    the cost of unpacking it; an element is unpacked (and checked in full) when it is needed.
    """
    unpacker = msgpack.Unpacker(
        max_buffer_size=max(len(data), 1), max_str_len=max_str, max_bin_len=max_bin, max_array_len=max_array,
        max_map_len=max_map, max_ext_len=0,
    )
    try:
        unpacker.feed(data)
        if unpacker.read_array_header() != count:
            raise ValueError(f"not an array of {count} elements")
        offsets = [unpacker.tell()]
        skip, tell, append = unpacker.skip, unpacker.tell, offsets.append
        for _ in range(count):
            skip()
            append(tell())
        if tell() != len(data):
            raise ValueError("trailing bytes")
        return offsets
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise CorruptionError(f"{what} does not decode: {exc}") from None


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def pack_rows(rows) -> tuple[bytes, list[int]]:
    """A msgpack array of ``rows``, and where each row starts in it (plus where the last ends)."""
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_array_header(len(rows))]
    offsets = [len(parts[0])]
    end = offsets[0]
    for row in rows:
        data = packer.pack(row)
        parts.append(data)
        end += len(data)
        offsets.append(end)
    return b"".join(parts), offsets


def array_length(data: bytes) -> int | None:
    """The element count a msgpack array declares at the start of ``data``; None if it is none."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(data), 1))
    unpacker.feed(data[:5])
    try:
        return unpacker.read_array_header()
    except Exception:  # not an array, or a header cut short
        return None


def array_header_size(count: int) -> int:
    """Bytes of the header msgpack writes before an array of ``count`` elements."""
    return 1 if count < 16 else 3 if count < 1 << 16 else 5


def _bin_header(size: int) -> bytes:
    """msgpack's bin 8/16/32 header, the one ``packb`` picks for ``size`` bytes."""
    if size < 1 << 8:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 1 << 16:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


def pack_map(doc: dict) -> bytes:
    """``pack(doc)``, byte for byte, with each ``bytes`` value copied once instead of through
    msgpack's growing buffer (a manifest's rows and history are megabytes at 10,000 versions)."""
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_map_header(len(doc))]
    for key, value in doc.items():
        parts.append(packer.pack(key))
        if type(value) is bytes:
            parts.append(_bin_header(len(value)))
            parts.append(value)
        else:
            parts.append(packer.pack(value))
    return b"".join(parts)
