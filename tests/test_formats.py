"""Format detection (gaia_cas/formats.py): by structure and magic bytes, never by loading.

Every sample is built here from its real on-disk layout (a real zip for Keras v3 and PyTorch,
real pickles of protocols 2..5, real zlib/gzip/bz2/xz streams for compressed joblib files), then
checked twice: ``formats.detect`` on the path, and the format ``repo.deploy`` records in the
manifest.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from conftest import make_savedmodel, snapshot
from gaia_cas import formats
from gaia_cas.errors import SourceError

# -- builders: each writes one artifact under ``base`` and returns its path -------------------

PICKLED = {"estimator": "CatBoostClassifier", "classes": ["clean", "contaminated"], "depth": 6}


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def savedmodel_pb(base: Path) -> Path:
    return make_savedmodel(base / "saved_model")


def savedmodel_pbtxt(base: Path) -> Path:
    folder = base / "saved_model_txt"
    _write(folder / "saved_model.pbtxt", b'saved_model_schema_version: 1\nmeta_graphs { }\n')
    _write(folder / "variables" / "variables.index", b"index")
    return folder


def keras_v3(base: Path) -> Path:
    return _zip(base / "model.keras", {
        "metadata.json": json.dumps({"keras_version": "3.3.3", "date_saved": "2025-07-16@20:29:17"}).encode(),
        "config.json": json.dumps({"module": "keras", "class_name": "Sequential", "config": {}}).encode(),
        "model.weights.h5": b"\x89HDF\r\n\x1a\n" + b"\0" * 64,
    })


def keras_v3_without_suffix(base: Path) -> Path:
    # Recognised by the member names alone, whatever the file is called.
    return _zip(base / "exported_model.zip", {
        "config.json": b"{}", "metadata.json": b"{}", "model.weights.h5": b"w",
    })


def keras_h5(base: Path) -> Path:
    return _write(base / "model.h5", b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)


def hdf5_other_suffix(base: Path) -> Path:
    return _write(base / "weights.hdf5", b"\x89HDF\r\n\x1a\n" + b"\x00\x08\x08\x00" * 32)


def catboost_cbm(base: Path) -> Path:
    return _write(base / "model.cbm", b"CBM1" + struct.pack("<I", 1234) + b"\x10\x00" * 200)


def onnx(base: Path) -> Path:
    # ModelProto: field 1 (ir_version) varint 8, then field 2 (producer_name) "pytorch".
    return _write(base / "model.onnx", b"\x08\x08\x12\x07pytorch\x1a\x052.3.0" + b"\x3a\x00" * 20)


def safetensors(base: Path) -> Path:
    header = json.dumps({
        "__metadata__": {"format": "pt"},
        "weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
    }).encode()
    return _write(base / "model.safetensors", struct.pack("<Q", len(header)) + header + b"\0" * 16)


def pytorch_zip(base: Path) -> Path:
    return _zip(base / "model.pt", {
        "archive/data.pkl": pickle.dumps({"state": "dict"}, protocol=2),
        "archive/byteorder": b"little",
        "archive/data/0": b"\0" * 64,
        "archive/version": b"3\n",
    })


def pytorch_zip_other_suffix(base: Path) -> Path:
    return _zip(base / "checkpoint.bin", {"checkpoint/data.pkl": b"\x80\x02}q\x00.", "checkpoint/version": b"3\n"})


def pytorch_legacy_pt(base: Path) -> Path:
    # torch.save before 1.6 (_use_new_zipfile_serialization=False): a run of protocol-2 pickles.
    return _write(base / "model.pt", pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
                  + pickle.dumps({"protocol_version": 1001}, protocol=2))


def pytorch_legacy_pth(base: Path) -> Path:
    return _write(base / "weights.pth", pickle.dumps({"conv1.weight": [0.0] * 8}, protocol=2))


def tflite(base: Path) -> Path:
    # FlatBuffer: 4-byte root offset, then the file identifier "TFL3".
    return _write(base / "model.tflite", b"\x1c\x00\x00\x00TFL3" + b"\x00\x00\x12\x00" * 40)


def unknown_text(base: Path) -> Path:
    return _write(base / "README.txt", b"this is not a model\n")


def unknown_binary(base: Path) -> Path:
    return _write(base / "blob.bin", bytes((i * 37 + 11) % 256 for i in range(5000)))


def unknown_empty_file(base: Path) -> Path:
    return _write(base / "empty.joblib", b"")


def unknown_zip(base: Path) -> Path:
    return _zip(base / "bundle.zip", {"a.txt": b"a", "dir/b.txt": b"b"})


def unknown_broken_zip(base: Path) -> Path:
    # Local-header magic but no central directory: zipfile fails, detection must not.
    return _write(base / "model.keras", b"PK\x03\x04" + b"\xff" * 100)


def unknown_folder(base: Path) -> Path:
    folder = base / "plain_folder"
    _write(folder / "weights.bin", b"\x01\x02\x03")
    _write(folder / "sub" / "labels.txt", b"cat\ndog\n")
    return folder


def unknown_folder_with_nested_savedmodel(base: Path) -> Path:
    # Only a saved_model.pb at the top of the folder makes it a SavedModel.
    folder = base / "export"
    make_savedmodel(folder / "1")
    return folder


def unknown_folder_with_savedmodel_dir(base: Path) -> Path:
    folder = base / "odd"
    (folder / "saved_model.pb").mkdir(parents=True)  # a folder named like the file
    _write(folder / "saved_model.pb" / "x", b"x")
    return folder


def onnx_name_without_protobuf_start(base: Path) -> Path:
    return _write(base / "model.onnx", b"\x12\x07pytorch")


def protobuf_start_without_onnx_name(base: Path) -> Path:
    return _write(base / "model.bin", b"\x08\x08\x12\x07pytorch")


def safetensors_header_longer_than_file(base: Path) -> Path:
    return _write(base / "model.safetensors", struct.pack("<Q", 10_000) + b'{"a": 1}')


def gzip_without_pickle_suffix(base: Path) -> Path:
    return _write(base / "data.gz", gzip.compress(b"plain text, not a pickle", mtime=0))


CASES = [
    (savedmodel_pb, "savedmodel"),
    (savedmodel_pbtxt, "savedmodel"),
    (keras_v3, "keras"),
    (keras_v3_without_suffix, "keras"),
    (keras_h5, "keras-h5"),
    (hdf5_other_suffix, "keras-h5"),
    (catboost_cbm, "catboost"),
    (onnx, "onnx"),
    (safetensors, "safetensors"),
    (pytorch_zip, "pytorch"),
    (pytorch_zip_other_suffix, "pytorch"),
    (pytorch_legacy_pt, "pytorch"),
    (pytorch_legacy_pth, "pytorch"),
    (tflite, "tflite"),
    (unknown_text, "unknown"),
    (unknown_binary, "unknown"),
    (unknown_empty_file, "unknown"),
    (unknown_zip, "unknown"),
    (unknown_broken_zip, "unknown"),
    (unknown_folder, "unknown"),
    (unknown_folder_with_nested_savedmodel, "unknown"),
    (unknown_folder_with_savedmodel_dir, "unknown"),
    (onnx_name_without_protobuf_start, "unknown"),
    (protobuf_start_without_onnx_name, "unknown"),
    (safetensors_header_longer_than_file, "unknown"),
    (gzip_without_pickle_suffix, "unknown"),
]


def _ids(case):
    return case[0].__name__


@pytest.mark.parametrize("build, expected", CASES, ids=[_ids(c) for c in CASES])
def test_detect(tmp_path, build, expected):
    path = build(tmp_path / "src")
    assert formats.detect(path) == expected
    assert formats.detect(str(path)) == expected  # str and PathLike alike


@pytest.mark.parametrize("build, expected", CASES, ids=[_ids(c) for c in CASES])
def test_deploy_records_format_in_manifest(repo, tmp_path, build, expected):
    path = build(tmp_path / "src")
    # force: a folder holding a SavedModel one level down is refused as the likely wrong folder
    result = repo.deploy("m", path, force=build is unknown_folder_with_nested_savedmodel)
    assert result.format == expected
    version = repo.manifest("m").versions[-1]
    assert version.format == expected
    assert version.version == result.version
    # Unknown formats deploy like any other: a current link that reaches the artifact's bytes.
    current = repo.root / "models" / "m" / "current"
    if path.is_dir():
        assert current.is_dir()
        original = sorted(p.relative_to(path) for p in path.rglob("*"))
        assert sorted(p.relative_to(current) for p in current.rglob("*")) == original
    else:
        assert current.read_bytes() == path.read_bytes()
        assert os.path.basename(os.readlink(current)) == path.name
    assert repo.resolve("m").format == expected


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("name, expected", [
    ("model_catboost_best.joblib", "joblib"),
    ("model.jbl", "joblib"),
    ("MODEL.JOBLIB", "joblib"),
    ("model.pkl", "pickle"),
    ("model.pickle", "pickle"),
    ("model", "pickle"),
    ("model.pt", "pytorch"),
    ("model.pth", "pytorch"),
])
def test_pickle_protocols_2_to_5(tmp_path, protocol, name, expected):
    data = pickle.dumps(PICKLED, protocol=protocol)
    assert data[:2] == bytes([0x80, protocol])  # the magic the detector relies on
    path = _write(tmp_path / name, data)
    assert formats.detect(path) == expected


@pytest.mark.parametrize("compress", [
    pytest.param(lambda d: zlib.compress(d, 3), id="zlib-3"),
    pytest.param(lambda d: zlib.compress(d, 1), id="zlib-1"),
    pytest.param(lambda d: zlib.compress(d, 9), id="zlib-9"),
    pytest.param(lambda d: zlib.compress(d, 6), id="zlib-6"),
    pytest.param(lambda d: gzip.compress(d, mtime=0), id="gzip"),
    pytest.param(bz2.compress, id="bz2"),
    pytest.param(lambda d: lzma.compress(d, format=lzma.FORMAT_XZ), id="xz"),
    pytest.param(lambda d: b"ZF0x00000000000000a4" + zlib.compress(d), id="joblib-legacy-ZF"),
])
@pytest.mark.parametrize("suffix", [".joblib", ".pkl"])
def test_compressed_joblib(tmp_path, repo, compress, suffix):
    path = _write(tmp_path / f"model_catboost_best{suffix}", compress(pickle.dumps(PICKLED, protocol=4)))
    assert formats.detect(path) == "joblib"
    repo.deploy("catboost", path)
    assert repo.manifest("catboost").versions[-1].format == "joblib"


def test_compressed_bytes_without_pickle_suffix_are_not_joblib(tmp_path):
    data = zlib.compress(pickle.dumps(PICKLED, protocol=4))
    assert formats.detect(_write(tmp_path / "model.joblib", data)) == "joblib"
    assert formats.detect(_write(tmp_path / "model.bin", data)) == "unknown"


def test_single_saved_model_pb_file_is_a_savedmodel(repo, tmp_path):
    path = make_savedmodel(tmp_path / "sm") / "saved_model.pb"
    assert formats.detect(path) == "savedmodel"
    repo.deploy("ssd", path)
    assert repo.manifest("ssd").versions[-1].format == "savedmodel"


def test_sample_models_are_detected(repo):
    from gaia_cas.samples import SAMPLES

    assert formats.detect(SAMPLES["ssd"]["source"]) == "savedmodel"
    assert formats.detect(SAMPLES["catboost"]["source"]) == "joblib"
    repo.deploy("ssd", SAMPLES["ssd"]["source"])
    repo.deploy("catboost", SAMPLES["catboost"]["source"])
    assert repo.manifest("ssd").versions[-1].format == "savedmodel"
    assert repo.manifest("catboost").versions[-1].format == "joblib"


def test_format_is_recorded_per_version(repo, tmp_path):
    """The format belongs to each version: a model can change format from one deploy to the next."""
    repo.deploy("m", make_savedmodel(tmp_path / "a" / "saved_model"))
    repo.deploy("m", keras_v3(tmp_path / "b"))
    repo.deploy("m", unknown_binary(tmp_path / "c"))
    assert [v.format for v in repo.manifest("m").versions] == ["savedmodel", "keras", "unknown"]


def test_dry_run_reports_format_without_writing(repo, tmp_path):
    path = catboost_cbm(tmp_path)
    before = snapshot(repo.root)
    result = repo.deploy("cb", path, dry_run=True)
    assert result.dry_run and result.format == "catboost"
    assert snapshot(repo.root) == before


# -- deploy never unpickles -------------------------------------------------------------------

class _Payload:
    """Unpickling this runs ``exec``, which creates ``marker``: proof that something loaded it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _hostile_pickle(marker: Path, protocol: int = 4) -> bytes:
    return pickle.dumps(_Payload(marker), protocol=protocol)


@pytest.mark.parametrize("name, expected", [
    ("model.joblib", "joblib"),
    ("model.pkl", "pickle"),
    ("model.pt", "pytorch"),
])
def test_deploy_never_unpickles(repo, tmp_path, monkeypatch, name, expected):
    marker = tmp_path / "unpickled.marker"
    data = _hostile_pickle(marker)
    source = _write(tmp_path / "src" / name, data)

    # Belt and braces: any use of the pickle module during deploy fails loudly as well.
    def forbidden(*args, **kwargs):
        raise AssertionError("deploy tried to unpickle the model")

    with monkeypatch.context() as m:
        for attr in ("load", "loads", "Unpickler", "_load", "_loads"):
            if hasattr(pickle, attr):
                m.setattr(pickle, attr, forbidden)
        dry = repo.deploy("m", source, dry_run=True)
        result = repo.deploy("m", source)
        resolved = repo.resolve("m")
        repo.show("m")
        repo.status()

    assert not marker.exists()
    assert dry.format == expected
    assert result.format == expected
    assert repo.manifest("m").versions[-1].format == expected
    assert resolved.format == expected
    assert resolved.path.read_bytes() == data  # stored faithfully, byte for byte
    assert not marker.exists()

    # Control: the payload is live, so the assertions above could have failed.
    pickle.loads(data)
    assert marker.exists()


def test_deploy_folder_with_hostile_pickle_never_unpickles(repo, tmp_path):
    marker = tmp_path / "unpickled.marker"
    folder = tmp_path / "src" / "bundle"
    _write(folder / "model.joblib", _hostile_pickle(marker, protocol=2))
    _write(folder / "preprocess.pkl", _hostile_pickle(marker, protocol=5))
    result = repo.deploy("bundle", folder)
    assert not marker.exists()
    assert result.format == "unknown"
    assert repo.manifest("bundle").versions[-1].format == "unknown"


def test_fifo_source_is_rejected_and_store_unchanged(repo, tmp_path):
    """A FIFO named like a model is refused (by the scan), never opened and waited on."""
    fifo = tmp_path / "model.joblib"
    os.mkfifo(fifo)
    # Hold a writer with a pickle's first bytes queued: a regression that opened and read the
    # FIFO would then misdetect it instead of hanging the suite.
    holder = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(holder, pickle.dumps(PICKLED, protocol=4))
        before = snapshot(repo.root)
        with pytest.raises(SourceError) as info:
            repo.deploy("m", fifo)
        assert "FIFO" in str(info.value)
        assert snapshot(repo.root) == before
        assert repo.models() == []
    finally:
        os.close(holder)
