"""Benchmark gaia-cas against `cp -r` (the copy-per-version workflow it replaces), in one run.

Run it from the checkout (it is not part of the test suite)::

    python -m gaia_cas.bench                          # default: ~1 GiB tree of 2003 files, 3 runs each
    python -m gaia_cas.bench --size 0.01 --repeat 1   # ~10 MiB, for a quick look
    python -m gaia_cas.bench --scaling --json out.json
    python -m gaia_cas.bench --dvc /path/to/dvc       # compare with DVC (found on PATH by default)
    python -m gaia_cas.bench --remote-endpoint URL    # also push/pull on S3 (gaia_cas.remote_bench)

It builds a synthetic model tree -- by default 2000 files of 4 KiB to 1 MiB (log-uniform sizes)
plus 3 large files, ~1 GiB of seeded random bytes -- and times real processes, as users run
them: `cp -r` (with and without `sync`), `gaia-cas deploy` of new content into a fresh root,
redeploys (unchanged, one small file changed, one large file changed), rollback/list/status on
a model with 10,000 versions (and rollback at 100), gc of a store of ~100,000 objects, CLI
start-up, the peak RSS of a deploy and, when `dvc` is available, `dvc add`.

Every figure is the median of ``--repeat`` runs. Absolute times on shared machines are noise,
so the table gives each median as a ratio to `cp -r` measured in the same run, and the targets
(docs/design.md, Performance budget) are checked on ratios wherever they are stated as ratios. The targets
are set for the default size; at other sizes their PASS/FAIL is indicative only.

Options: ``--size`` scales the tree (0.01 is ~10 MiB and 1% of the files, at least 20),
``--versions`` and ``--gc-objects`` shrink the version and gc benchmarks, ``--scaling`` adds
deploys at 1x, 2x and 4x the file count, ``--json FILE`` writes every sample, ``--workdir``
and ``--keep`` choose and keep the scratch folder (default: a fresh folder under /tmp,
removed at the end). Exit status 0 when the benchmark ran, whether or not targets pass.
"""

from __future__ import annotations

import argparse
import compileall
import json
import math
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import xxhash

from .layout import Layout
from .manifest import Version, record
from . import remote_bench
from .manifest_store import Manifests
from .repo import Repository
from .statcache import RACY_NS
from .trees import DIR, FILE, Entry, encode_tree
from .versions import bump

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
DEFAULT_FILES = 2000          # small files at --size 1
MIN_FILES = 20
LARGE_FILES = 3
SMALL_MIN, SMALL_MAX = 4 * KIB, 1 * MIB
CHUNK = 4 * MIB               # random.randbytes is fastest in chunks of a few MiB
MODEL = "bench"
LAUNCHER = Path(__file__).resolve().parent.parent / "bin" / "gaia-cas"
OLD = time.time() - 7 * 86400  # an mtime well past gc's default 1 h grace period


class BenchError(Exception):
    """A command failed or reported something unexpected: the figures would be meaningless."""


# -- running commands ------------------------------------------------------------------------

@dataclass(frozen=True)
class Finished:
    seconds: float
    max_rss_kib: int
    out: str


def _env() -> dict[str, str]:
    """The caller's environment, minus what would point gaia-cas elsewhere or phone home."""
    env = {k: v for k, v in os.environ.items() if k not in ("GAIA_CAS_ROOT", "GAIA_CAS_LOCK_TIMEOUT")}
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def run(argv: list, cwd: Path | None = None) -> Finished:
    """Run one command to completion: its wall time and its own peak RSS.

    This is subprocess.run, except that the child is reaped with os.wait4, which returns that
    child's rusage -- the figure GNU `time -v` prints as 'Maximum resident set size' -- where
    RUSAGE_CHILDREN would give the largest of every child so far. Output goes to files, not
    pipes, so no reader thread runs inside the measurement.
    """
    argv = [str(a) for a in argv]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd, env=_env())
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            detail = err.read().decode(errors="replace").strip()[-2000:]
            raise BenchError(f"{shlex.join(argv)} exited with {proc.returncode}: {detail}")
        return Finished(seconds, usage.ru_maxrss, out.read().decode(errors="replace"))


def gaia(root: Path, *args) -> Finished:
    """bin/gaia-cas under this interpreter, so both sides of a comparison use the same Python."""
    return run([sys.executable, LAUNCHER, "--root", root, *args])


def settle() -> None:
    """Flush dirty pages left by setup, so they are not written back inside the next measurement."""
    os.sync()


def remove(path: Path) -> None:
    """rmtree that also gets through gaia-cas's read-only tree folders."""
    def make_writable_and_retry(func, failed, _exc):
        os.chmod(os.path.dirname(failed), 0o755)
        func(failed)

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=make_writable_and_retry)


# -- the synthetic model tree ----------------------------------------------------------------

@dataclass(frozen=True)
class FileSpec:
    path: str  # relative to the tree
    size: int


def small_files(count: int, seed: int, prefix: str) -> list[FileSpec]:
    """Log-uniform sizes: many small files, a few near 1 MiB, 100 to a folder."""
    rng = random.Random(seed)
    lo, hi = math.log(SMALL_MIN), math.log(SMALL_MAX)
    return [FileSpec(f"{prefix}/s{i // 100:03d}/part_{i:05d}.bin", int(math.exp(rng.uniform(lo, hi))))
            for i in range(count)]


def plan_tree(size: float, seed: int) -> list[FileSpec]:
    """The small files, plus large files holding the rest of ``size`` GiB: the shape of a
    SavedModel with sharded variables."""
    small = small_files(max(MIN_FILES, round(DEFAULT_FILES * size)), seed, "shards")
    rest = max(int(size * GIB) - sum(f.size for f in small), LARGE_FILES * MIB)
    large = [FileSpec(f"variables/variables.data-{k:05d}-of-{LARGE_FILES:05d}", rest // LARGE_FILES)
             for k in range(LARGE_FILES)]
    return small + large


def random_bytes(key: str, size: int):
    """Seeded, so a tree is the same on every run; keyed per file, so no two files share bytes."""
    rng = random.Random(key)
    while size > 0:
        n = min(size, CHUNK)
        yield rng.randbytes(n)
        size -= n


def write_tree(dest: Path, plan: list[FileSpec], seed: int) -> None:
    for spec in plan:
        path = dest / spec.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            for block in random_bytes(f"{seed}/{spec.path}", spec.size):
                f.write(block)


def wait_until_at_rest(tree: Path) -> None:
    """Wait until the newest file of ``tree`` (by mtime or ctime) is older than the stat cache's racy window.

    Like git's index, the stat cache never trusts a file modified in the last moments, so a
    deploy right after the tree was written would not remember those files, and the 'unchanged'
    redeploy after it would read them again. A model deployed from a trained artifact is at
    rest; so is the measured tree.
    """
    stats = [os.lstat(os.path.join(d, f)) for d, _, files in os.walk(tree) for f in files]
    newest = max(max(st.st_mtime_ns, st.st_ctime_ns) for st in stats)  # racy by mtime or ctime
    wait = (newest + RACY_NS) / 1e9 - time.time()
    if wait > 0:
        time.sleep(wait + 0.1)


def rewrite(path: Path, key: str, offset: int = 0, length: int | None = None) -> int:
    """Overwrite bytes in place (same inode, new mtime), as a retrain would. Returns the count."""
    length = path.stat().st_size - offset if length is None else length
    with open(path, "r+b") as f:
        f.seek(offset)
        for block in random_bytes(key, length):
            f.write(block)
    return length


# -- results ---------------------------------------------------------------------------------

@dataclass
class Bench:
    opts: argparse.Namespace
    work: Path
    source: Path
    plan: list[FileSpec]
    samples: dict[str, list[float]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    ratios: dict[str, list[float]] = field(default_factory=dict)  # run by run: see bracketed()

    @property
    def tree_bytes(self) -> int:
        return sum(f.size for f in self.plan)

    def add(self, key: str, label: str, seconds: float) -> None:
        self.labels[key] = label
        self.samples.setdefault(key, []).append(seconds)

    def median(self, key: str) -> float | None:
        values = self.samples.get(key)
        return statistics.median(values) if values else None

    def bracketed(self, key: str, base: str, value: float, before: float, after: float) -> None:
        """One run's ratio of ``key`` to ``base``, with ``base`` measured just before and just
        after ``key``: their mean cancels a drift of the machine (a disk that slows down as it is
        written to, say) instead of charging it to whichever side happens to run second."""
        self.ratios.setdefault(f"{key}/{base}", []).append(value / ((before + after) / 2))

    def paired(self, key: str, base: str) -> float:
        """The median of the run-by-run ratios ``key / base``."""
        return statistics.median(self.ratios[f"{key}/{base}"])

    def fresh_root(self, name: str) -> Path:
        root = self.work / name
        remove(root)
        Repository.init(root)
        return root


def checkout_revision() -> str | None:
    """The commit measured (with -dirty for local edits): figures are only comparable per commit."""
    try:
        proc = subprocess.run(["git", "-C", LAUNCHER.parent.parent, "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return proc.stdout.strip() or None


def progress(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# -- measurements ----------------------------------------------------------------------------

def copy_once(b: Bench) -> dict[str, float]:
    """The old system's cost per version: a full copy, and the same copy made durable.

    ``cp -r && sync`` is timed as the shell runs it, one process after the other; the copy's
    own time is the ``cp -r`` figure.
    """
    dest = b.work / "copy"
    settle()
    copied = run(["cp", "-r", b.source, dest]).seconds
    synced = copied + run(["sync"]).seconds
    b.add("cp", "cp -r", copied)
    b.add("cp_sync", "cp -r && sync", synced)
    remove(dest)
    settle()
    return {"cp": copied, "cp_sync": synced}


def deploy(root: Path, source: Path, expect_unchanged: bool) -> Finished:
    done = gaia(root, "--json", "deploy", MODEL, source, "--reason", "benchmark",
                "--meta", "framework=tensorflow", "--meta", "input_size=[320, 320]")
    if json.loads(done.out)["unchanged"] != expect_unchanged:
        raise BenchError(f"deploy of {source} {'should' if expect_unchanged else 'should not'} be unchanged")
    return done


def bench_deploy(b: Bench) -> Path:
    """A deploy into a fresh root and an unchanged redeploy, between two copies, in each run.

    Each run is copy, deploy, copy: the deploy is compared with the mean of the copies around
    it, so a slow spell of the (shared) machine or disk hits both sides of the ratio alike.
    Returns the last root, deployed once, for the change and version benchmarks.
    """
    rss = []
    for rep in range(b.opts.repeat):
        before = copy_once(b)
        root = b.fresh_root(f"deploy-{rep}")
        settle()
        first = deploy(root, b.source, False)
        b.add("deploy_new", "deploy, new content (fresh root)", first.seconds)
        rss.append(first.max_rss_kib)
        settle()
        unchanged = deploy(root, b.source, True)
        b.add("redeploy_unchanged", "redeploy, unchanged", unchanged.seconds)
        after = copy_once(b)
        b.bracketed("deploy_new", "cp_sync", first.seconds, before["cp_sync"], after["cp_sync"])
        b.bracketed("redeploy_unchanged", "cp", unchanged.seconds, before["cp"], after["cp"])
        if rep + 1 < b.opts.repeat:
            remove(root)
    b.extra["deploy_peak_rss_mib"] = max(rss) / 1024
    return root


def bench_consume(b: Bench) -> None:
    """deploy --consume of new content: the source is handed over by hard link, not copied.

    Each run gets its own copy of the tree (made and flushed before the clock starts), since a
    consumed source is gone afterwards. This is the mode to set against `dvc add` with DVC's
    hardlink cache, which does not copy either.
    """
    handover = b.work / "handover"
    for _ in range(b.opts.repeat):
        remove(handover)
        run(["cp", "-r", b.source, handover])
        root = b.fresh_root("consume-root")
        settle()
        done = gaia(root, "--json", "deploy", MODEL, handover, "--consume", "--reason", "benchmark")
        consumed = json.loads(done.out)["consumed"]
        if handover.exists() or consumed["removed"] != len(b.plan):
            raise BenchError(f"deploy --consume left the source behind: {consumed}")
        b.extra["consume_linked_files"] = consumed["linked"]
        b.add("deploy_consume", "deploy --consume, new content (fresh root)", done.seconds)
        remove(root)


def bench_changes(b: Bench, root: Path) -> None:
    """Redeploy after rewriting one small file, and after changing 4 KiB of one large file.

    Each kind of change has its own loop: like git's index, the stat cache does not trust a
    file modified in the last moments, so a change followed at once by another measurement
    would also re-read the file changed before. One change to a tree at rest is the case.
    """
    small = min((f for f in b.plan if f.path.startswith("shards/")), key=lambda f: abs(f.size - 64 * KIB))
    large = b.plan[-1]
    for rep in range(b.opts.repeat):
        rewrite(b.source / small.path, f"small-{rep}")
        settle()
        b.add("redeploy_small", "redeploy, one small file rewritten", deploy(root, b.source, False).seconds)
    for rep in range(b.opts.repeat):
        rewrite(b.source / large.path, f"large-{rep}", offset=large.size // 2, length=4 * KIB)
        settle()
        b.add("redeploy_large", "redeploy, one large file changed", deploy(root, b.source, False).seconds)
    b.extra["small_changed_bytes"] = small.size
    b.extra["large_changed_bytes"] = large.size  # objects are whole files: the file is re-read and stored


def grow_history(root: Path, total: int) -> None:
    """Bring the model to ``total`` versions without deploying them one by one.

    The new versions reuse the real versions' trees (already stored and materialized), each
    with its own number, deployment id and history event, written through the library's own
    manifest edit -- so the manifest is exactly what that many deploys would leave.
    """
    manifests = Manifests(Layout(root), lock_timeout=30)
    with manifests.edit(MODEL) as manifest:
        templates = list(manifest.versions)
        missing = total - len(manifest.versions)
        start = datetime.now().astimezone() - timedelta(minutes=missing + 1)  # in the past, a minute apart
        for i in range(missing):
            at = start + timedelta(minutes=i)
            number = bump(manifest.highest)
            manifest.versions.append(templates[i % len(templates)].replace(
                version=number, deployment_id=at.strftime("%Y%m%d_%H%M%S"),
                created_at=at.isoformat(timespec="seconds"), reason=f"synthetic version {i}", pinned=False))
            before, manifest.current, manifest.highest = manifest.current, number, number
            record(manifest, "deploy", version=number, before=before, at=at.isoformat(timespec="seconds"),
                   user="bench", host="bench", reason=f"synthetic version {i}")


def manifest_bytes_per_version(root: Path) -> float:
    manifest = Manifests(Layout(root)).read(MODEL)
    return Layout(root).manifest_path(MODEL).stat().st_size / len(manifest.versions)


def bench_versions(b: Bench, root: Path) -> None:
    """Rollback at 100 and at N versions (it should not grow with the count), list and status at N.

    Rollbacks alternate between the first two real versions, both materialized: each one is a
    real change of the current version.
    """
    real = [v.version for v in Manifests(Layout(root)).read(MODEL).versions][:2]
    few, many = min(100, b.opts.versions), b.opts.versions
    per_version = b.extra.setdefault("manifest_bytes_per_version", {})
    for count, key in ((few, "rollback_base"), (many, "rollback")):
        grow_history(root, count)
        per_version[str(count)] = manifest_bytes_per_version(root)
        for rep in range(b.opts.repeat):
            settle()
            b.add(key, f"rollback at {count} versions", gaia(root, "rollback", MODEL, real[rep % 2]).seconds)
    for _ in range(b.opts.repeat):
        b.add("list", f"list at {many} versions", gaia(root, "list", MODEL).seconds)
        b.add("status", f"status at {many} versions", gaia(root, "status").seconds)


def write_object(objects: Path, data: bytes, mtime: float) -> str:
    """Place an object the way the store would hold it: named by its oid, 0444, here with an old
    mtime so gc's grace period does not shield it."""
    oid = xxhash.xxh3_128_hexdigest(data)
    fd = os.open(objects / oid[:2] / oid[2:], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    try:
        os.write(fd, data)
        os.utime(fd, (mtime, mtime))
    finally:
        os.close(fd)
    return oid


def gc_garbage(objects: Path, count: int, rep: int) -> None:
    for i in range(count):
        write_object(objects, b"garbage %d %d " % (rep, i) * 4, OLD)


def gc_store(root: Path, count: int) -> None:
    """``count`` referenced objects, reached from one version through 1000-entry subtrees."""
    objects = Layout(root).objects
    for i in range(256):
        (objects / f"{i:02x}").mkdir(exist_ok=True)
    subtrees = []
    for start in range(0, count, 1000):
        entries = []
        for i in range(start, min(start + 1000, count)):
            data = b"kept %d " % i * 4
            entries.append(Entry(f"w{i:06d}.bin", FILE, write_object(objects, data, OLD), len(data)))
        subtrees.append(Entry(f"d{start // 1000:04d}", DIR, write_object(objects, encode_tree(entries), OLD),
                              sum(e.size for e in entries)))
    tree = write_object(objects, encode_tree(subtrees), OLD)
    now = datetime.now().astimezone()
    with Manifests(Layout(root), lock_timeout=30).edit(MODEL, create=True) as manifest:
        manifest.versions.append(Version("1.0.0", now.strftime("%Y%m%d_%H%M%S"), now.isoformat(timespec="seconds"),
                                         tree, "directory", None, sum(e.size for e in subtrees), count, "unknown"))
        manifest.current = manifest.highest = "1.0.0"
        record(manifest, "deploy", version="1.0.0", before=None, at=now.isoformat(timespec="seconds"),
               user="bench", host="bench", reason="gc benchmark")


def bench_gc(b: Bench) -> None:
    """gc of a store with ``--gc-objects`` objects, half of them unreferenced and old."""
    root = b.fresh_root("gc")
    half = b.opts.gc_objects // 2
    gc_store(root, half)
    label = f"gc, {b.opts.gc_objects} objects, half garbage"
    for rep in range(b.opts.repeat):
        gc_garbage(Layout(root).objects, half, rep)  # the previous run deleted the last batch
        settle()
        done = gaia(root, "--json", "gc")
        deleted = json.loads(done.out)["deleted"].get("object", 0)
        if deleted != half:
            raise BenchError(f"gc deleted {deleted} objects, expected {half}")
        b.add("gc", label, done.seconds)
    remove(root)


def bench_startup(b: Bench) -> None:
    """Interleaved, so both see the same machine noise; start-up is cheap, so more runs."""
    for _ in range(max(10, b.opts.repeat)):
        b.add("python_startup", "python -c pass", run([sys.executable, "-c", "pass"]).seconds)
        b.add("cli_startup", "gaia-cas --version", run([sys.executable, LAUNCHER, "--version"]).seconds)


def bench_dvc(b: Bench, dvc: str) -> None:
    """`dvc add`, first and unchanged, in DVC's default (reflink, else copy) and hardlink modes."""
    for mode in ("default", "hardlink"):
        for rep in range(b.opts.repeat):
            repo = b.work / f"dvc-{mode}"
            remove(repo)
            repo.mkdir()
            run(["git", "init", "-q"], cwd=repo)
            run([dvc, "init", "-q"], cwd=repo)
            run([dvc, "config", "core.analytics", "false"], cwd=repo)
            if mode == "hardlink":
                run([dvc, "config", "cache.type", "hardlink"], cwd=repo)
            run(["cp", "-r", b.source, repo / "model"])  # dvc adds data inside its repo
            settle()
            b.add(f"dvc_{mode}_first", f"dvc add ({mode}), first", run([dvc, "add", "model"], cwd=repo).seconds)
            settle()
            b.add(f"dvc_{mode}_unchanged", f"dvc add ({mode}), unchanged",
                  run([dvc, "add", "model"], cwd=repo).seconds)
            remove(repo)
    b.extra["dvc_version"] = run([dvc, "--version"]).out.strip()


def bench_scaling(b: Bench) -> None:
    """Deploy at 1x, 2x and 4x the file count: is the cost linear in bytes and in files?

    The larger trees are the base tree (hard links, so no extra disk) plus more small files
    drawn from the same distribution.
    """
    n = sum(1 for f in b.plan if f.path.startswith("shards/"))
    extra_plan = small_files(3 * n, b.opts.seed + 1, "extra")
    pool = b.work / "extra"
    write_tree(pool, extra_plan, b.opts.seed + 1)
    rows = []
    for factor in (1, 2, 4):
        tree = b.work / f"scale-{factor}"
        chosen = extra_plan[: (factor - 1) * n]
        for spec, base in [(f, b.source) for f in b.plan] + [(f, pool) for f in chosen]:
            (tree / spec.path).parent.mkdir(parents=True, exist_ok=True)
            os.link(base / spec.path, tree / spec.path)
        files, size = len(b.plan) + len(chosen), b.tree_bytes + sum(f.size for f in chosen)
        deploys, copies = [], []
        for _ in range(b.opts.repeat):
            root = b.fresh_root("scale-root")
            settle()
            deploys.append(deploy(root, tree, False).seconds)
            remove(root)
            settle()
            start = time.perf_counter()
            run(["cp", "-r", tree, b.work / "scale-copy"])
            run(["sync"])
            copies.append(time.perf_counter() - start)
            remove(b.work / "scale-copy")
        seconds = statistics.median(deploys)
        rows.append({"factor": factor, "files": files, "bytes": size, "deploy_s": seconds,
                     "cp_sync_s": statistics.median(copies), "s_per_gib": seconds / (size / GIB),
                     "ms_per_1000_files": seconds / files * 1e6})
        remove(tree)
    remove(pool)
    b.extra["scaling"] = rows


# -- targets and report ----------------------------------------------------------------------

def targets(b: Bench) -> list[dict]:
    """Each target: what is compared, the measured value, the limit, and whether it holds.

    A target whose inputs were not measured (no dvc) is left out.
    """
    m = b.median
    result = []

    def check(name: str, value: float | None, limit: float | None, unit: str) -> None:
        if value is not None and limit is not None:
            result.append({"target": name, "value": value, "limit": limit, "unit": unit, "pass": value <= limit})

    new, unchanged = m("deploy_new"), m("redeploy_unchanged")
    # Each run's deploy is bracketed by copies, so each run's ratio compares the two under the
    # same disk weather; the median of those ratios is steadier than a ratio of two medians.
    check("deploy (new content) <= 1.25 x cp -r && sync", b.paired("deploy_new", "cp_sync"), 1.25, "x")
    check("unchanged redeploy <= 0.05 x cp -r", b.paired("redeploy_unchanged", "cp"), 0.05, "x")
    check("unchanged redeploy < 100 ms", unchanged * 1000, 100, "ms")
    # A small change should cost the unchanged scan, plus its share of a full deploy (2x slack),
    # plus a fixed allowance for committing a version (new tree objects, links, fsyncs).
    share = new * b.extra["small_changed_bytes"] / b.tree_bytes
    check("small-change redeploy <= unchanged + 2 x its byte share of a deploy + 100 ms",
          m("redeploy_small") * 1000, (unchanged + 2 * share + 0.1) * 1000, "ms")
    for key in ("rollback", "list", "status"):
        check(f"{b.labels[key]} <= 150 ms", m(key) * 1000, 150, "ms")
    check(f"{b.labels['rollback']} <= 1.5 x {b.labels['rollback_base']}", m("rollback") / m("rollback_base"), 1.5, "x")
    check("CLI start-up <= python -c pass + 40 ms", m("cli_startup") * 1000, (m("python_startup") + 0.040) * 1000, "ms")
    check("deploy peak RSS <= 100 MiB", b.extra["deploy_peak_rss_mib"], 100, "MiB")
    if m("dvc_hardlink_first") is not None:
        # Mode for mode: neither DVC's hardlink cache nor deploy --consume copies the bytes;
        # both copy modes do.
        check("deploy --consume >= 2 x faster than dvc add (hardlink), first",
              m("deploy_consume") / m("dvc_hardlink_first"), 0.5, "x")
        check("deploy >= 3 x faster than dvc add (default), first", new / m("dvc_default_first"), 1 / 3, "x")
    from .chunk_bench import chunk_targets

    chunk_targets(b, check)
    return result


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:10.1f} ms"


def _environment() -> str:
    """Which interpreter ran the commands: a virtualenv's site-packages holds only what was
    installed into it, while a system interpreter's may run other packages' .pth start-up hooks
    in every process (python -c pass shows what they cost)."""
    kind = "virtualenv" if sys.prefix != sys.base_prefix else "system site-packages"
    return f"{sys.executable}, {kind}"


def report(b: Bench, checks: list[dict]) -> str:
    if b.opts.remote_only:
        return "\n".join(remote_bench.report(b) + [""] + _verdicts(checks))
    cp = b.median("cp")
    lines = [f"gaia-cas benchmark ({b.extra.get('revision') or 'unknown revision'}): {len(b.plan)} files, "
             f"{b.tree_bytes / MIB:.1f} MiB, median of {b.opts.repeat} run(s); {os.cpu_count()} CPUs, "
             f"Python {platform.python_version()} ({_environment()})", ""]
    lines.append(f"{'operation':48} {'median':>13} {'vs cp -r':>9}   runs (ms)")
    for key, label in b.labels.items():
        median = b.median(key)
        runs = " ".join(f"{s * 1000:.0f}" for s in b.samples[key][:12])
        lines.append(f"{label:48} {_ms(median)} {median / cp:9.3f}   {runs}")
    lines.append(f"{'deploy peak RSS':48} {b.extra['deploy_peak_rss_mib']:10.1f} MiB")
    unchanged = b.median("redeploy_unchanged")
    for key, changed in (("redeploy_small", "small_changed_bytes"), ("redeploy_large", "large_changed_bytes")):
        lines.append(f"{b.labels[key]}: {b.median(key) / unchanged:.2f} x unchanged redeploy, "
                     f"{(b.median(key) - unchanged) * 1000:+.1f} ms for {b.extra[changed] / KIB:.0f} KiB re-stored")
    per_version = ", ".join(f"{v:.0f} at {n}" for n, v in b.extra.get("manifest_bytes_per_version", {}).items())
    lines.append(f"manifest bytes per version: {per_version}")
    lines.append(f"run-by-run ratios (median): deploy / cp -r && sync {b.paired('deploy_new', 'cp_sync'):.3f}, "
                 f"unchanged redeploy / cp -r {b.paired('redeploy_unchanged', 'cp'):.3f}")
    if b.median("dvc_hardlink_first") is not None:
        lines.append(f"copying deploy / dvc add (hardlink), first: "
                     f"{b.median('deploy_new') / b.median('dvc_hardlink_first'):.3f} (DVC's hardlink mode copies "
                     "no bytes; deploy --consume is its counterpart)")
    if "scaling" in b.extra:
        lines += ["", f"{'scaling':8} {'files':>7} {'MiB':>8} {'deploy':>13} {'vs cp&&sync':>11} "
                      f"{'s/GiB':>7} {'ms/1000 files':>14}"]
        for row in b.extra["scaling"]:
            lines.append(f"{row['factor']:>7}x {row['files']:7d} {row['bytes'] / MIB:8.1f} {_ms(row['deploy_s'])} "
                         f"{row['deploy_s'] / row['cp_sync_s']:11.3f} {row['s_per_gib']:7.3f} "
                         f"{row['ms_per_1000_files']:14.1f}")
    from .chunk_bench import chunk_report

    lines += chunk_report(b)
    lines += ["", *remote_bench.report(b)]
    lines += ["", "targets" + ("" if b.opts.size == 1 else " (set for --size 1; indicative only at this size)")]
    lines += _verdicts(checks)
    if "dvc_version" not in b.extra:
        lines.append("  (dvc not found: the DVC comparisons were skipped)")
    return "\n".join(lines)


def _verdicts(checks: list[dict]) -> list[str]:
    return [f"  {'PASS' if c['pass'] else 'FAIL'}  {c['target']}: {c['value']:.3f} {c['unit']} "
            f"(limit {c['limit']:.3f} {c['unit']})" for c in checks]


def to_json(b: Bench, checks: list[dict]) -> dict:
    if b.opts.remote_only:
        return {"config": {"size": b.opts.size, "files": len(b.plan), "bytes": b.tree_bytes, "seed": b.opts.seed,
                           "revision": b.extra.get("revision")}, "remote": b.extra.get("remote"), "targets": checks}
    cp = b.median("cp")
    return {
        "config": {"size": b.opts.size, "files": len(b.plan), "bytes": b.tree_bytes, "repeat": b.opts.repeat,
                   "versions": b.opts.versions, "gc_objects": b.opts.gc_objects, "seed": b.opts.seed,
                   "cpus": os.cpu_count(), "python": platform.python_version(), "interpreter": _environment(),
                   "dvc": b.extra.get("dvc_version"), "revision": b.extra.get("revision")},
        "labels": b.labels,
        "medians": {k: b.median(k) for k in b.samples},
        "ratios": {k: b.median(k) / cp for k in b.samples},
        "run_ratios": b.ratios,  # per run, against the copies measured just before and after
        "samples": b.samples,
        "deploy_peak_rss_mib": b.extra["deploy_peak_rss_mib"],
        "manifest_bytes_per_version": b.extra.get("manifest_bytes_per_version", {}),
        "scaling": b.extra.get("scaling"),
        "targets": checks,
        "remote": b.extra.get("remote"),
    }


# -- main ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gaia_cas.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=float, default=1.0, help="tree size in GiB; files scale with it (default 1)")
    p.add_argument("--repeat", type=int, default=5, help="runs per measurement; medians are reported (default 5)")
    p.add_argument("--versions", type=int, default=10_000, help="versions for list/status/rollback (default 10000)")
    p.add_argument("--gc-objects", type=int, default=100_000, help="objects in the gc store (default 100000)")
    p.add_argument("--scaling", action="store_true", help="also deploy at 1x, 2x and 4x the file count")
    p.add_argument("--dvc", default=shutil.which("dvc"), help="the dvc command (default: dvc on PATH, if any)")
    p.add_argument("--no-dvc", dest="dvc", action="store_const", const=None, help="skip the DVC comparison")
    p.add_argument("--no-chunks", action="store_true", help="skip the ten-retrains chunk benchmark")
    p.add_argument("--json", metavar="FILE", help="also write every sample and target as JSON")
    p.add_argument("--workdir", metavar="DIR", help="scratch folder (default: a new folder under /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic tree (default 0)")
    remote_bench.add_arguments(p)
    opts = p.parse_args(argv)
    if opts.remote_only and not opts.remote_endpoint:
        p.error("--remote-only needs an S3 endpoint: --remote-endpoint URL or $GAIA_CAS_S3_ENDPOINT")
    if opts.remote_repeat is not None and opts.remote_repeat < 1:
        p.error("--remote-repeat must be >= 1")
    if opts.size <= 0 or opts.repeat < 1 or opts.versions < 4 or opts.gc_objects < 2:
        p.error("--size must be > 0, --repeat >= 1, --versions >= 4, --gc-objects >= 2")
    return opts


def run_all(b: Bench) -> None:
    b.extra["revision"] = checkout_revision()
    progress(f"writing the tree: {len(b.plan)} files, {b.tree_bytes / MIB:.1f} MiB")
    write_tree(b.source, b.plan, b.opts.seed)
    wait_until_at_rest(b.source)
    if b.opts.remote_only:
        remote_bench.measure(b, progress)
        return
    progress("cp -r, deploy and unchanged redeploy")
    root = bench_deploy(b)
    progress("deploy --consume")
    bench_consume(b)
    progress("redeploys after a small and a large change")
    bench_changes(b, root)
    progress(f"rollback, list and status up to {b.opts.versions} versions")
    bench_versions(b, root)
    remove(root)
    progress(f"gc of {b.opts.gc_objects} objects")
    bench_gc(b)
    if not b.opts.no_chunks:
        from .chunk_bench import bench_chunks

        progress("chunks: ten retrains of one large weights file")
        bench_chunks(b, gaia, run, settle, remove)
    progress("start-up")
    bench_startup(b)
    if b.opts.dvc:
        progress(f"dvc add ({b.opts.dvc})")
        bench_dvc(b, b.opts.dvc)
    if b.opts.scaling:
        progress("scaling: deploy at 1x, 2x, 4x files")
        bench_scaling(b)
    if b.opts.remote_endpoint:
        remote_bench.measure(b, progress)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if not LAUNCHER.is_file():
        print(f"bench: {LAUNCHER} not found: run the benchmark from a gaia-cas checkout", file=sys.stderr)
        return 2
    # Always a new folder of our own (inside --workdir if given), so cleaning up never touches
    # anything else.
    parent = Path(opts.workdir).absolute() if opts.workdir else Path("/tmp")
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gaia-cas-bench-", dir=parent))
    b = Bench(opts, work, work / "model", plan_tree(opts.size, opts.seed))
    # Byte-compile the package first, as pip does when it installs one: a checkout used with
    # PYTHONDONTWRITEBYTECODE would otherwise recompile every module on every command.
    compileall.compile_dir(str(LAUNCHER.parent.parent / "gaia_cas"), quiet=2)
    try:
        run_all(b)
        checks = ([] if opts.remote_only else targets(b)) + remote_bench.targets(b)
        print(report(b, checks))
        if opts.json:
            Path(opts.json).write_text(json.dumps(to_json(b, checks), indent=2) + "\n")
        return 0
    except (BenchError, remote_bench.RemoteBenchError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if opts.keep:
            progress(f"kept {work}")
        else:
            remove(work)


if __name__ == "__main__":
    sys.exit(main())
