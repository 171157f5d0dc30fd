"""The benchmark's chunk part: ten retrains of one large weights file (design.md, Chunks).

Ten versions of a weights file (96 MiB at ``--size 1``): the first random, six with their last
2 MiB rewritten in place, three with a few KiB inserted in the middle (every later byte
shifts). Each is deployed by the CLI, then ``gc --grace 0s`` keeps the nine cold ones as
chunks. Measured in the same run: bytes on disk against one version, a rollback to a cold
version (rebuilt from its chunks, verified, fsynced), by the CLI and in process, against ``cp``
of the file and against ``cp && sync`` (the copy as durable as the rebuild), a rollback to a hot one
(a link swap), the gc pass that splits them, and that every version rolls back byte-identical.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import xxhash

MIB = 1 << 20
RETRAINS_TAIL = 6
RETRAINS_INSERT = 3


def _weights(size: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    versions = [rng.randbytes(size)]
    for step in range(RETRAINS_TAIL):
        last = versions[-1]
        versions.append(last[:-2 * MIB] + rng.randbytes(2 * MIB))
    for step in range(RETRAINS_INSERT):
        last = versions[-1]
        middle = len(last) // 2 + step * MIB
        versions.append(last[:middle] + rng.randbytes(4096 + step * 1024) + last[middle:])
    return versions


def _store_bytes(root: Path) -> int:
    seen, total = set(), 0
    for dirpath, _, files in os.walk(root / "store" / "objects"):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def bench_chunks(b, gaia, run, settle, remove) -> None:
    """``gaia(root, *args)``, ``run(argv)``, ``settle()``, ``remove(path)``: the benchmark's own."""
    from .recipes import change_settings
    from .repo import Repository

    size = max(8 * MIB, int(96 * MIB * b.opts.size))
    root = b.work / "chunks"
    remove(root)
    repo = Repository.init(root)
    change_settings(repo.layout, threshold=max(4 * MIB, min(64 * MIB, size // 2)))
    source = b.work / "ssd-weights"
    (source / "variables").mkdir(parents=True, exist_ok=True)
    (source / "saved_model.pb").write_bytes(b"graph" * 1000)
    weights = _weights(size, b.opts.seed)
    numbers = []
    for data in weights:
        (source / "variables" / "variables.data-00000-of-00001").write_bytes(data)
        out = gaia(root, "--json", "deploy", "ssd", source, "--reason", "retrain")
        numbers.append(__import__("json").loads(out.out)["version"])
    before = _store_bytes(root)
    settle()
    b.add("chunk_gc", "gc splitting 9 cold versions into chunks", gaia(root, "gc", "--grace", "0s").seconds)
    after = _store_bytes(root)
    b.extra["chunks"] = {"file_bytes": size, "versions": len(weights), "bytes_whole": before, "bytes_chunked": after}

    cold_file = b.work / "cold-copy-source"
    cold_file.write_bytes(weights[0])
    copy_target = b.work / "cold-copy"
    identical = 0
    for rep in range(b.opts.repeat):
        # Both copies a cold rollback compares with: `cp` leaves its bytes in the page cache,
        # `cp && sync` makes them durable, as the rebuild does before the file gets its name.
        settle()
        b.add("chunk_cp", "cp of one weights file", run(["cp", cold_file, copy_target]).seconds)
        copy_target.unlink()
        settle()
        b.add("chunk_cp_sync", "cp && sync of one weights file",
              run(["sh", "-c", 'cp "$0" "$1" && sync', cold_file, copy_target]).seconds)
        copy_target.unlink()
        target = numbers[rep % (len(numbers) - 1)]  # a cold version each run
        settle()
        b.add("rollback_cold", "rollback to a cold version (rebuilt from chunks)",
              gaia(root, "rollback", "ssd", target).seconds)
        settle()
        b.add("rollback_hot", "rollback to a hot version (link swap)", gaia(root, "rollback", "ssd", numbers[-1]).seconds)
        gaia(root, "gc", "--grace", "0s")  # the version rolled back to goes cold again
        # The same rebuild without the interpreter's start-up: the library call, in this process.
        target = numbers[(rep + 4) % (len(numbers) - 1)]
        settle()
        started = time.perf_counter()
        repo.rollback("ssd", target)
        b.add("rollback_cold_lib", "rollback to a cold version, in process (library)", time.perf_counter() - started)
        repo.rollback("ssd", numbers[-1])
        gaia(root, "gc", "--grace", "0s")
    started = time.perf_counter()
    for number, data in zip(numbers, weights):
        gaia(root, "rollback", "ssd", number)
        served = Path(repo.resolve("ssd").path) / "variables" / "variables.data-00000-of-00001"
        identical += xxhash.xxh3_128_hexdigest(served.read_bytes()) == xxhash.xxh3_128_hexdigest(data)
    b.extra["chunks"]["identical_rollbacks"] = identical
    b.extra["chunks"]["check_seconds"] = time.perf_counter() - started
    remove(root)
    remove(source)
    cold_file.unlink()


def chunk_targets(b, check) -> None:
    info = b.extra.get("chunks")
    if not info:
        return
    check(f"{info['versions']} retrains on disk <= 2.5 x one version", info["bytes_chunked"] / info["file_bytes"],
          2.5, "x")
    check("every version rolls back byte-identical (mismatches)", info["versions"] - info["identical_rollbacks"], 0,
          "versions")
    check("rollback to a hot version <= 150 ms", b.median("rollback_hot") * 1000, 150, "ms")
    check("rollback to a cold version <= 1.5 x cp of its bytes", b.median("rollback_cold") / b.median("chunk_cp"),
          1.5, "x")
    # The honest comparison for a durable write, and the same without the interpreter's start-up:
    # reported beside the target, not in place of it.
    check("rollback to a cold version (CLI) <= 1.5 x cp && sync of its bytes",
          b.median("rollback_cold") / b.median("chunk_cp_sync"), 1.5, "x")
    check("rollback to a cold version (in process) <= 1.5 x cp && sync of its bytes",
          b.median("rollback_cold_lib") / b.median("chunk_cp_sync"), 1.5, "x")


def chunk_report(b) -> list[str]:
    info = b.extra.get("chunks")
    if not info:
        return []
    return [f"chunks: {info['versions']} versions of a {info['file_bytes'] / MIB:.0f} MiB file: "
            f"{info['bytes_whole'] / MIB:.1f} MiB whole, {info['bytes_chunked'] / MIB:.1f} MiB once cold "
            f"({info['bytes_chunked'] / info['file_bytes']:.2f} x one version); "
            f"{info['identical_rollbacks']}/{info['versions']} rollbacks byte-identical",
            f"cold rollback: CLI {b.median('rollback_cold') / b.median('chunk_cp'):.2f} x cp, "
            f"{b.median('rollback_cold') / b.median('chunk_cp_sync'):.2f} x cp && sync; in process "
            f"{b.median('rollback_cold_lib') / b.median('chunk_cp'):.2f} x cp, "
            f"{b.median('rollback_cold_lib') / b.median('chunk_cp_sync'):.2f} x cp && sync"]
