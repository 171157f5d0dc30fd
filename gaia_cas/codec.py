"""The one way gaia-cas decodes msgpack: explicit limits, no duplicate keys, one error type.

msgpack's own defaults bound lengths by the buffer size; gaia-cas states its limits anyway, so a
manifest, tree or cache declaring a huge string, array or map fails at once instead of
allocating, and a map with a repeated key (two "current" fields, say) is refused, not
silently resolved by last-one-wins.
"""

from __future__ import annotations

import msgpack

from .errors import CorruptionError


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
