"""The remote part of the benchmark: push and pull of the benchmark's tree against an S3 engine,
side by side in one run with raw obstore and, when installed, DVC (dvc-s3)::

    python -m gaia_cas.bench --remote-endpoint http://127.0.0.1:7480          # with the rest
    python -m gaia_cas.bench --remote-only --size 0.5                         # only this part
    python -m gaia_cas.bench --remote-only --dvc /tmp/dvc-venv/bin/dvc

The endpoint defaults to ``$GAIA_CAS_S3_ENDPOINT`` (what ``ceph-rgw start`` exports); the
credentials come from the AWS environment, as for gaia-cas itself. Without an endpoint the
part is skipped, with a line saying so.

Each run, under a fresh prefix, measures in this order: a raw obstore put of the tree's
objects (the very files of the local store, trees included) on 32 threads; ``gaia-cas push``
of the same version; a nothing-changed push (several times, median); a raw get of the same
objects into memory, and one into files (no fsync: what the disk alone costs); ``gaia-cas
pull`` into a fresh root (every object verified, staged, fsynced, installed, materialized,
linked); then ``dvc push``, a nothing-changed ``dvc push`` and ``dvc pull`` of the same tree. Then, once,
a head-only retrain: a 96 MiB weights file pushed, its last 12 % rewritten, pushed again, and
pulled by a store that has the first version -- the bytes each side moves against the bytes
that changed (target: the push sends at most the changed bytes + 8 MiB).
Raw and gaia-cas alike run as processes of this interpreter, so both pay its start-up.

The ratios are throughputs, run by run (raw seconds ÷ gaia-cas seconds of the same run), then
the median: push ÷ raw put and pull ÷ raw get, targets >= 0.8; a nothing-changed push <= 0.3 s.
Everything under the prefix is deleted after each run; a bucket made for the benchmark (by
boto3, without ``--remote-bucket``) is removed at the end. The engine must hold one run's
data: about three times the tree (raw, gaia-cas, DVC) -- with ceph-rgw, whose store is RAM,
set ``CEPH_RGW_STORE_BYTES`` accordingly (space of deleted objects returns within minutes).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

JOBS = 32                  # the raw side's concurrency: the best measured against Ceph RGW here
NOTHING_CHANGED_RUNS = 3
RATIO_TARGET = 0.8         # push and pull at least this share of the raw throughput
NOTHING_CHANGED_TARGET = 0.3
RETRAIN_BYTES = 96 << 20   # the retrain's weights file
RETRAIN_HEAD = 0.12        # the share of it a head-only retrain rewrites (at its end)
RETRAIN_SLACK = 8 << 20    # the bound: a retrain's push sends <= changed + this
MODEL = "bench"
LAUNCHER = Path(__file__).resolve().parent.parent / "bin" / "gaia-cas"
LABELS = {
    "raw_put": f"raw obstore put, {JOBS} threads",
    "push": "gaia-cas push",
    "push_unchanged": "gaia-cas push, nothing changed",
    "raw_get": f"raw obstore get, {JOBS} threads, into memory",
    "raw_get_files": f"raw obstore get, {JOBS} threads, into files",
    "pull": "gaia-cas pull (verified, fsynced, linked)",
    "dvc_push": "dvc push",
    "dvc_push_unchanged": "dvc push, nothing changed",
    "dvc_pull": "dvc pull",
}


class RemoteBenchError(Exception):
    """A step of the remote comparison failed: its figures would be meaningless."""


def add_arguments(parser) -> None:
    group = parser.add_argument_group("remote (S3)")
    group.add_argument("--remote-endpoint", metavar="URL", default=os.environ.get("GAIA_CAS_S3_ENDPOINT"),
                       help="S3 endpoint for the push/pull comparison (default: $GAIA_CAS_S3_ENDPOINT; "
                            "none: skipped)")
    group.add_argument("--no-remote", dest="remote_endpoint", action="store_const", const=None,
                       help="skip the remote comparison")
    group.add_argument("--remote-bucket", metavar="NAME",
                       help="an existing bucket to work in, under a fresh prefix (default: a new bucket, made "
                            "with boto3 and removed at the end)")
    group.add_argument("--remote-repeat", type=int, metavar="N",
                       help="runs of the remote comparison (default: --repeat, at most 3)")
    group.add_argument("--remote-only", action="store_true", help="measure only the remote comparison")


# -- running -----------------------------------------------------------------------------------

def _run(argv: list, cwd: Path | None = None) -> tuple[float, str]:
    """One command to completion: (wall seconds, stdout). Output goes to files, not pipes."""
    import tempfile

    argv = [str(a) for a in argv]
    env = {k: v for k, v in os.environ.items() if k not in ("GAIA_CAS_ROOT", "GAIA_CAS_LOCK_TIMEOUT")}
    env["DVC_NO_ANALYTICS"] = "1"
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd, env=env).returncode
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if code != 0:
            detail = err.read().decode(errors="replace").strip()[-2000:]
            raise RemoteBenchError(f"{' '.join(argv)} exited with {code}: {detail}")
        return seconds, out.read().decode(errors="replace")


def _gaia(root: Path, *args) -> tuple[float, str]:
    return _run([sys.executable, LAUNCHER, "--root", root, *args])


def _raw(action: str, endpoint: str, bucket: str, prefix: str, objects: Path, dest: Path | None = None) -> float:
    return _run([sys.executable, "-m", "gaia_cas.remote_bench", action, endpoint, bucket, prefix, objects,
                 *([dest] if dest else [])])[0]


def _client(endpoint: str, bucket: str):
    """A plain obstore S3Store (the raw side: obstore's defaults, credentials from the environment)."""
    from obstore.store import S3Store

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return S3Store(bucket, config={"endpoint": endpoint, "region": region, "virtual_hosted_style_request": False},
                   client_options={"allow_http": endpoint.startswith("http://")})


def _raw_main(argv: list[str]) -> int:
    """``python -m gaia_cas.remote_bench put|get|get-files ENDPOINT BUCKET PREFIX OBJECTS [DEST]``:
    the raw side, one process like gaia-cas: every file of a local ``store/objects`` (fan-out
    folders) put under, or got from, ``PREFIX/objects/`` on JOBS threads."""
    from concurrent.futures import ThreadPoolExecutor

    import obstore

    action, endpoint, bucket, prefix, objects = argv[:5]
    dest = argv[5] if len(argv) > 5 else None
    store = _client(endpoint, bucket)
    names = sorted(f"{shard}/{name}" for shard in os.listdir(objects) if len(shard) == 2
                   for name in os.listdir(os.path.join(objects, shard)))

    def put(name: str) -> int:
        path = Path(objects, name)
        obstore.put(store, f"{prefix}objects/{name}", path)
        return path.stat().st_size

    def get(name: str) -> int:
        size = 0
        for chunk in obstore.get(store, f"{prefix}objects/{name}").stream():
            size += len(chunk)
        return size

    def get_file(name: str) -> int:
        size = 0
        fd = os.open(os.path.join(dest, name.replace("/", "")), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for chunk in obstore.get(store, f"{prefix}objects/{name}").stream():
                os.write(fd, chunk)
                size += len(chunk)
        finally:
            os.close(fd)
        return size

    function = {"put": put, "get": get, "get-files": get_file}[action]
    with ThreadPoolExecutor(JOBS) as pool:
        total = sum(pool.map(function, names))
    print(json.dumps({"objects": len(names), "bytes": total}))
    return 0


def _delete_prefix(endpoint: str, bucket: str, prefix: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import obstore

    store = _client(endpoint, bucket)
    keys = [meta["path"] for batch in obstore.list(store, prefix=prefix, chunk_size=1000) for meta in batch]
    with ThreadPoolExecutor(JOBS) as pool:
        list(pool.map(lambda key: obstore.delete(store, key), keys))


def _make_bucket(endpoint: str) -> str:
    try:
        import boto3
    except ImportError:
        raise RemoteBenchError("boto3 is not installed: give an existing bucket with --remote-bucket") from None
    name = f"gaia-cas-bench-{os.urandom(4).hex()}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


def _remove_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    _delete_prefix(endpoint, bucket, "")
    boto3.client("s3", endpoint_url=endpoint).delete_bucket(Bucket=bucket)


def _dvc_supports_s3(dvc: str) -> bool:
    try:
        _, out = _run([dvc, "version"])
    except (RemoteBenchError, OSError):
        return False
    return "s3 (" in out.partition("Supports:")[2]  # dvc-s3 adds "s3 (s3fs = ...)" there


# -- measuring ---------------------------------------------------------------------------------

def measure(b, progress) -> None:
    """Fill ``b.extra["remote"]`` with every sample of the comparison (see the module doc)."""
    opts = b.opts
    endpoint = opts.remote_endpoint.rstrip("/")
    runs = opts.remote_repeat or min(opts.repeat, 3)
    made = opts.remote_bucket is None
    bucket = _make_bucket(endpoint) if made else opts.remote_bucket
    base = f"gaia-cas-bench-{os.urandom(4).hex()}/"
    dvc = opts.dvc if opts.dvc and _dvc_supports_s3(opts.dvc) else None
    samples: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {"push/raw_put": [], "pull/raw_get": [], "pull/raw_get_files": []}
    doc = {"endpoint": endpoint, "jobs": JOBS, "runs": runs, "samples": samples, "run_ratios": ratios,
           "dvc": dvc, "dvc_version": None}
    b.extra["remote"] = doc

    def add(key: str, seconds: float) -> float:
        samples.setdefault(key, []).append(seconds)
        return seconds

    source_root = b.work / "remote-source"
    shutil.rmtree(source_root, ignore_errors=True)
    _gaia(source_root, "init")
    _, out = _gaia(source_root, "--json", "deploy", MODEL, b.source, "--reason", "remote benchmark")
    objects = source_root / "store" / "objects"
    doc["objects"] = sum(len(os.listdir(objects / s)) for s in os.listdir(objects) if len(s) == 2)
    doc["bytes"] = sum(f.stat().st_size for f in objects.glob("*/*"))
    if dvc:
        doc["dvc_version"] = _run([dvc, "--version"])[1].strip()
    try:
        for rep in range(runs):
            prefix = f"{base}r{rep}/"
            url = f"s3://{bucket}/{prefix}gaia"
            progress(f"remote run {rep + 1}/{runs}: raw put, push, nothing-changed push")
            if rep:
                _gaia(source_root, "remote", "remove", "origin")
            _gaia(source_root, "remote", "add", "origin", url, "--endpoint", endpoint)
            os.sync()
            raw_put = add("raw_put", _raw("put", endpoint, bucket, f"{prefix}raw/", objects))
            os.sync()
            seconds, out = _gaia(source_root, "--json", "push", MODEL)
            pushed = json.loads(out)["pushed"][0]
            if pushed["versions_sent"] != 1 or pushed["bytes_sent"] < doc["bytes"]:  # large files go as chunks
                raise RemoteBenchError(f"push sent {pushed['bytes_sent']} bytes, expected {doc['bytes']} at least")
            ratios["push/raw_put"].append(raw_put / add("push", seconds))
            for _ in range(NOTHING_CHANGED_RUNS):
                seconds, out = _gaia(source_root, "--json", "push", MODEL)
                if json.loads(out)["pushed"][0]["objects_sent"] != 0:
                    raise RemoteBenchError(f"a nothing-changed push sent something: {out.strip()}")
                add("push_unchanged", seconds)

            progress(f"remote run {rep + 1}/{runs}: raw get (memory, files), pull")
            raw_get = add("raw_get", _raw("get", endpoint, bucket, f"{prefix}raw/", objects))
            files = b.work / "remote-raw-files"
            shutil.rmtree(files, ignore_errors=True)
            files.mkdir()
            os.sync()
            raw_files = add("raw_get_files", _raw("get-files", endpoint, bucket, f"{prefix}raw/", objects, files))
            shutil.rmtree(files)
            target = b.work / "remote-pulled"
            _remove(target)
            _gaia(target, "init")
            _gaia(target, "remote", "add", "origin", url, "--endpoint", endpoint)
            os.sync()
            seconds, out = _gaia(target, "--json", "pull", MODEL)
            received = json.loads(out)["pulled"][0]["bytes_received"]
            if received < doc["bytes"]:
                raise RemoteBenchError(f"pull received {received} bytes, expected {doc['bytes']} at least")
            add("pull", seconds)
            ratios["pull/raw_get"].append(raw_get / seconds)
            ratios["pull/raw_get_files"].append(raw_files / seconds)
            _remove(target)
            if dvc:
                progress(f"remote run {rep + 1}/{runs}: dvc push, nothing-changed push, pull")
                _measure_dvc(b, dvc, f"s3://{bucket}/{prefix}dvc", endpoint, add)
            _delete_prefix(endpoint, bucket, prefix)
        progress("remote: a head-only retrain, pushed and pulled as chunks")
        _measure_retrain(b, endpoint, f"s3://{bucket}/{base}retrain/gaia", doc)
    finally:
        try:
            _delete_prefix(endpoint, bucket, base)
            if made:
                _remove_bucket(endpoint, bucket)
        finally:
            _remove(source_root)


def _measure_dvc(b, dvc: str, url: str, endpoint: str, add) -> None:
    repo = b.work / "remote-dvc"
    _remove(repo)
    repo.mkdir()
    _run(["git", "init", "-q"], cwd=repo)
    _run([dvc, "init", "-q"], cwd=repo)
    _run([dvc, "config", "core.analytics", "false"], cwd=repo)
    _run(["cp", "-r", b.source, repo / "model"])
    _run([dvc, "add", "-q", "model"], cwd=repo)
    _run([dvc, "remote", "add", "-d", "bench", url], cwd=repo)
    _run([dvc, "remote", "modify", "bench", "endpointurl", endpoint], cwd=repo)
    os.sync()
    add("dvc_push", _run([dvc, "push", "-q"], cwd=repo)[0])
    for _ in range(NOTHING_CHANGED_RUNS):
        add("dvc_push_unchanged", _run([dvc, "push", "-q"], cwd=repo)[0])
    _remove(repo / ".dvc" / "cache")
    _remove(repo / "model")
    os.sync()
    add("dvc_pull", _run([dvc, "pull", "-q"], cwd=repo)[0])
    if not (repo / "model").is_dir():
        raise RemoteBenchError("dvc pull left no model folder")
    _remove(repo)


def _measure_retrain(b, endpoint: str, url: str, doc: dict) -> None:
    import random

    rng = random.Random(16)
    trainer, server = b.work / "remote-retrain", b.work / "remote-retrain-server"
    src = b.work / "remote-retrain-src"
    for path in (trainer, server, src):
        _remove(path)
    weights = src / "variables" / "variables.data-00000-of-00001"
    weights.parent.mkdir(parents=True)
    (src / "saved_model.pb").write_bytes(rng.randbytes(64 << 10))
    # a quick look (--size under 0.1) retrains a 12 MiB file, chunked from 4 MiB up
    size = RETRAIN_BYTES if b.opts.size >= 0.1 else RETRAIN_BYTES // 8
    weights.write_bytes(rng.randbytes(size))
    changed = int(size * RETRAIN_HEAD)
    out = {"file_bytes": size, "changed_bytes": changed}
    try:
        for root in (trainer, server):
            _gaia(root, "init")
            _gaia(root, "remote", "add", "origin", url, "--endpoint", endpoint)
            if size < RETRAIN_BYTES:
                _gaia(root, "store", "--chunk-threshold", "4MiB")
        _gaia(trainer, "deploy", MODEL, src)
        seconds, text = _gaia(trainer, "--json", "push", MODEL)
        out["first_push_bytes"], out["first_push_s"] = json.loads(text)["pushed"][0]["bytes_sent"], seconds
        seconds, text = _gaia(server, "--json", "pull", MODEL)
        out["first_pull_bytes"], out["first_pull_s"] = json.loads(text)["pulled"][0]["bytes_received"], seconds
        with open(weights, "r+b") as f:
            f.seek(size - changed)
            f.write(rng.randbytes(changed))
        _gaia(trainer, "deploy", MODEL, src)
        os.sync()
        seconds, text = _gaia(trainer, "--json", "push", MODEL)
        out["push_bytes"], out["push_s"] = json.loads(text)["pushed"][0]["bytes_sent"], seconds
        seconds, text = _gaia(server, "--json", "pull", MODEL)
        out["pull_bytes"], out["pull_s"] = json.loads(text)["pulled"][0]["bytes_received"], seconds
        pulled = server / "models" / MODEL / "current" / "variables" / weights.name
        if pulled.read_bytes() != weights.read_bytes():
            raise RemoteBenchError("the pulled retrain is not the pushed one")
    finally:
        for path in (trainer, server, src):
            _remove(path)
    doc["retrain"] = out


def _remove(path: Path) -> None:
    """rmtree that also gets through gaia-cas's read-only tree folders."""
    def make_writable_and_retry(func, failed, _exc):
        os.chmod(os.path.dirname(failed), 0o755)
        func(failed)

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=make_writable_and_retry)


# -- targets and report ------------------------------------------------------------------------

def _median(doc: dict, key: str) -> float | None:
    values = doc["samples"].get(key)
    return statistics.median(values) if values else None


def targets(b) -> list[dict]:
    doc = b.extra.get("remote")
    if not doc or not doc["samples"]:
        return []
    push = statistics.median(doc["run_ratios"]["push/raw_put"])
    pull = statistics.median(doc["run_ratios"]["pull/raw_get"])
    unchanged = _median(doc, "push_unchanged")
    retrain = doc.get("retrain")
    last = [] if not retrain else [
        {"target": "retrain push (head-only) <= changed bytes + 8 MiB", "value": retrain["push_bytes"] / (1 << 20),
         "limit": (retrain["changed_bytes"] + RETRAIN_SLACK) / (1 << 20), "unit": "MiB",
         "pass": retrain["push_bytes"] <= retrain["changed_bytes"] + RETRAIN_SLACK}]
    return [
        {"target": f"push >= {RATIO_TARGET} x raw put throughput", "value": push, "limit": RATIO_TARGET,
         "unit": "x", "pass": push >= RATIO_TARGET},
        {"target": f"pull >= {RATIO_TARGET} x raw get throughput (into memory)", "value": pull,
         "limit": RATIO_TARGET, "unit": "x", "pass": pull >= RATIO_TARGET},
        {"target": f"nothing-changed push <= {NOTHING_CHANGED_TARGET} s", "value": unchanged,
         "limit": NOTHING_CHANGED_TARGET, "unit": "s", "pass": unchanged <= NOTHING_CHANGED_TARGET},
    ] + last


def report(b) -> list[str]:
    """The remote section of the report (one line saying why when it was skipped)."""
    doc = b.extra.get("remote")
    if not doc:
        return ["(no S3 endpoint: the remote comparison was skipped; give --remote-endpoint URL or set "
                "GAIA_CAS_S3_ENDPOINT)"]
    mib = doc["bytes"] / (1 << 20)
    lines = [f"remote: {doc['endpoint']}, {doc['objects']} objects, {mib:.1f} MiB, median of {doc['runs']} run(s)",
             f"{'operation':48} {'median':>10} {'MiB/s':>8}   runs (s)"]
    for key, label in LABELS.items():
        median = _median(doc, key)
        if median is None:
            continue
        rate = "" if key.endswith("unchanged") else f"{mib / median:8.0f}"
        runs = " ".join(f"{s:.2f}" for s in doc["samples"][key][:12])
        lines.append(f"{label:48} {median:8.2f} s {rate:>8}   {runs}")
    r = {k: statistics.median(v) for k, v in doc["run_ratios"].items() if v}
    if r:
        lines.append(f"throughput ratios (median of run-by-run): push / raw put {r['push/raw_put']:.2f}, "
                     f"pull / raw get {r['pull/raw_get']:.2f} (into files: {r['pull/raw_get_files']:.2f})")
    retrain = doc.get("retrain")
    if retrain:
        m = 1 << 20
        lines.append(f"head-only retrain of a {retrain['file_bytes'] / m:.0f} MiB file ({retrain['changed_bytes'] / m:.1f} MiB "
                     f"changed): push sent {retrain['push_bytes'] / m:.1f} MiB in {retrain['push_s']:.2f} s (first push "
                     f"{retrain['first_push_bytes'] / m:.1f} MiB in {retrain['first_push_s']:.2f} s); pull received "
                     f"{retrain['pull_bytes'] / m:.1f} MiB in {retrain['pull_s']:.2f} s (first pull "
                     f"{retrain['first_pull_bytes'] / m:.1f} MiB in {retrain['first_pull_s']:.2f} s)")
    if doc["dvc"] is None:
        lines.append("(dvc with S3 support not found: dvc push/pull skipped; --dvc PATH to a dvc with dvc-s3)")
    else:
        lines.append(f"dvc: {doc['dvc']} ({doc['dvc_version']})")
    return lines


if __name__ == "__main__":
    sys.exit(_raw_main(sys.argv[1:]))
