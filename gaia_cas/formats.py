"""Recognise a model's format from its structure and magic bytes -- never by loading it.

Loading a pickle executes code, so a joblib or pickle file is only ever recognised by its first
bytes. Zip-based formats (Keras v3, PyTorch) are told apart by the names in the zip's central
directory, which ``zipfile`` reads without decompressing or executing anything.
"""

from __future__ import annotations

import os
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
    path = Path(path)
    if path.is_dir():
        return detect_directory(path)
    return detect_file(path)


def detect_directory(path: Path) -> str:
    if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
        return "savedmodel"
    return UNKNOWN


def _head(path: Path, n: int = 64) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def detect_file(path: Path) -> str:
    head = _head(path)
    suffix = path.suffix.lower()
    if head.startswith(b"PK\x03\x04"):
        return _detect_zip(path, suffix)
    if head.startswith(_HDF5_MAGIC):
        return "keras-h5"
    if head.startswith(b"CBM1"):
        return "catboost"
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return "tflite"
    if _looks_like_safetensors(path, head):
        return "safetensors"
    if _looks_like_pickle(head):
        if suffix in (".pt", ".pth"):
            return "pytorch"
        return "joblib" if suffix in (".joblib", ".jbl") else "pickle"
    if suffix in _PICKLE_SUFFIXES and head.startswith(_COMPRESSION_MAGIC):
        return "joblib"  # joblib.dump(..., compress=...) wraps the pickle in a compressor
    if suffix == ".onnx" and head[:1] == b"\x08":
        return "onnx"  # protobuf field 1 (ir_version), varint
    if path.name in ("saved_model.pb", "saved_model.pbtxt"):
        return "savedmodel"
    return UNKNOWN


def _looks_like_pickle(head: bytes) -> bool:
    # Protocol 2+ opens with PROTO (0x80) and the protocol number.
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _looks_like_safetensors(path: Path, head: bytes) -> bool:
    if len(head) < 10:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    size = path.stat().st_size
    return 2 <= header_len <= size - 8 and head[8:9] == b"{"


def _detect_zip(path: Path, suffix: str) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return UNKNOWN
    if suffix == ".keras" or {"config.json", "metadata.json"} <= set(names):
        return "keras"
    if any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        return "pytorch"
    return UNKNOWN
