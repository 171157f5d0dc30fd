"""Worker processes for the concurrency tests: python tests/workers.py ROLE ROOT [ARGS...].

Each prints one JSON line per event and exits non-zero on any unexpected error, so the test
can assert on exit codes and on what every process saw.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gaia_cas import resolve  # noqa: E402
from gaia_cas.errors import GaiaCasError  # noqa: E402
from gaia_cas.ingest import hash_only  # noqa: E402
from gaia_cas.repo import Repository  # noqa: E402


def emit(**fields):
    print(json.dumps(fields), flush=True)


def deployer(root, model, count, tag):
    repo = Repository(root, lock_timeout=60)
    src = Path(root).parent / f"src-{model}-{tag}"
    (src / "variables").mkdir(parents=True, exist_ok=True)
    shared = b"shared weights " * 20000  # the same object in every version of every model
    for i in range(int(count)):
        (src / "variables" / "variables.data-00000-of-00001").write_bytes(shared)
        (src / "saved_model.pb").write_bytes(f"{model}-{tag}-{i}".encode() * 50)
        result = repo.deploy(model, src, reason=f"{tag}-{i}")
        emit(event="deployed", model=model, version=result.version, hash=result.hash)


def collector(root, stop_file, max_rounds):
    repo = Repository(root, lock_timeout=60)
    rounds = 0
    while rounds < int(max_rounds) and not os.path.exists(stop_file):
        repo.cleanup(None, keep=2)
        plan, result = repo.gc(grace=timedelta(0))
        rounds += 1
        emit(event="gc", deleted=result.deleted)
        time.sleep(0.005)  # let queued writers through, as a real schedule would
    emit(event="done", rounds=rounds)


def rollbacker(root, model, stop_file, max_rounds):
    """Moves current back and forth while everything else runs; a version cleaned up under it is
    a refusal (a GaiaCasError), never a crash."""
    repo = Repository(root, lock_timeout=60)
    rounds = refused = 0
    while rounds < int(max_rounds) and not os.path.exists(stop_file):
        rounds += 1
        try:
            repo.rollback(model, "previous", reason="stress")
        except GaiaCasError:
            refused += 1
        time.sleep(0.01)
    emit(event="done", rounds=rounds, refused=refused)


def reader(root, model, stop_file, max_rounds):
    rounds = errors = mismatches = 0
    while rounds < int(max_rounds) and not os.path.exists(stop_file):
        rounds += 1
        active = resolve(model, root=root)
        try:
            seen = hash_only(active.path)  # reads every file of the active version
            if seen.tree != active.hash:  # never allowed: a served version's bytes are its own
                emit(event="error", what="content does not match the resolved hash", version=active.version)
                errors += 1
                mismatches += 1
        except (OSError, GaiaCasError) as exc:
            # Allowed only if the manifest moved on while we read (the version stopped being
            # current and gc took its checkout).
            still = resolve(model, root=root)
            if still.generation == active.generation:
                emit(event="error", what=repr(exc), version=active.version)
                errors += 1
    emit(event="done", rounds=rounds, errors=errors, mismatches=mismatches)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    {"deployer": deployer, "collector": collector, "reader": reader, "rollbacker": rollbacker}[role](*args)
