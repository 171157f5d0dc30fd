"""Recognise a model's format from its structure and magic bytes -- never by loading it.

Loading a pickle executes code, so a joblib or pickle file is only ever recognised by its first
bytes. Zip-based formats (Keras v3, PyTorch) are told apart by the names in the zip's central
directory, which ``zipfile`` reads without decompressing or executing anything.
"""

from __future__ import annotations

import os
import stat
import struct
import zipfile
from pathlib import Path

UNKNOWN = "unknown"

_PICKLE_SUFFIXES = {".joblib", ".jbl", ".pkl", ".pickle"}
_COMPRESSION_MAGIC = (
    b"\x1f\x8b",  # gzip
    b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda",  # zlib
    b"BZh",  # bz2
    b"\xfd7zXZ\x00",  # xz
    b"\x04\x22\x4d\x18",  # lz4 frame
    b"ZF",  # joblib's legacy zlib container
)
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def detect(path: str | os.PathLike) -> str:
    """The format of the file or folder at ``path``: its files are opened without following a
    symlink or blocking on a FIFO (a special file is UNKNOWN). Deploys do not use this: they
    detect from what the scan checked (``ingest.source_format``)."""
    path = Path(path)
    if path.is_dir():
        return detect_directory(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return UNKNOWN
    with os.fdopen(fd, "rb", buffering=0) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return UNKNOWN
        return detect_open(f, path.name)


def detect_directory(path: Path) -> str:
    if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
        return "savedmodel"
    return UNKNOWN


def detect_names(files: "set[str] | dict") -> str:
    """The format of a folder from the names of the regular files directly in it."""
    if "saved_model.pb" in files or "saved_model.pbtxt" in files:
        return "savedmodel"
    return UNKNOWN


_FOLDER_NAMES = {"savedmodel": "SavedModel"}


def nested_format(children: "dict[str, set[str]]") -> "tuple[str, str] | None":
    """For a folder of no known format: the one subfolder (name, format) that has a known
    folder format, given each subfolder's file names -- ``{"saved_model": {"saved_model.pb",
    ...}}`` for ``big/saved_model`` -- or None when none does, or several do (then no single
    folder was obviously meant)."""
    found = [(name, detect_names(files)) for name, files in sorted(children.items())]
    known = [(name, _FOLDER_NAMES.get(fmt, fmt)) for name, fmt in found if fmt != UNKNOWN]
    return known[0] if len(known) == 1 else None


def detect_file(path: Path) -> str:
    return detect(path)


def detect_open(f, name: str) -> str:
    """The format of a regular file already open for reading (binary, seekable) named ``name``;
    read from its start, and only its first bytes unless it is a zip."""
    f.seek(0)
    head = f.read(64)
    suffix = os.path.splitext(name)[1].lower()
    if head.startswith(b"PK\x03\x04"):
        return _detect_zip(f, suffix)
    if head.startswith(_HDF5_MAGIC):
        return "keras-h5"
    if head.startswith(b"CBM1"):
        return "catboost"
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return "tflite"
    if _looks_like_safetensors(os.fstat(f.fileno()).st_size, head):
        return "safetensors"
    if _looks_like_pickle(head):
        if suffix in (".pt", ".pth"):
            return "pytorch"
        return "joblib" if suffix in (".joblib", ".jbl") else "pickle"
    if suffix in _PICKLE_SUFFIXES and head.startswith(_COMPRESSION_MAGIC):
        return "joblib"  # joblib.dump(..., compress=...) wraps the pickle in a compressor
    if suffix == ".onnx" and head[:1] == b"\x08":
        return "onnx"  # protobuf field 1 (ir_version), varint
    if name in ("saved_model.pb", "saved_model.pbtxt"):
        return "savedmodel"
    return UNKNOWN


def _looks_like_pickle(head: bytes) -> bool:
    # Protocol 2+ opens with PROTO (0x80) and the protocol number.
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _looks_like_safetensors(size: int, head: bytes) -> bool:
    if len(head) < 10:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 2 <= header_len <= size - 8 and head[8:9] == b"{"


def _detect_zip(f, suffix: str) -> str:
    try:
        with zipfile.ZipFile(f) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return UNKNOWN
    if suffix == ".keras" or {"config.json", "metadata.json"} <= set(names):
        return "keras"
    if any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        return "pytorch"
    return UNKNOWN
