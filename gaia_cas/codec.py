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
