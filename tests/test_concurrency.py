"""Deploys, cleanups, gc with no grace period and lock-free readers, all at once, in real processes."""

from __future__ import annotations


from conftest import finish_worker, make_savedmodel, spawn_worker

spawn, finish = spawn_worker, finish_worker


def test_gc_loop_never_takes_what_deploys_and_readers_need(repo, root, tmp_path):
    for model in ("a", "b"):
        repo.deploy(model, make_savedmodel(tmp_path / f"seed-{model}"))
    stop = tmp_path / "stop"
    deployers = [spawn("deployer", root, "a", 6, "x"), spawn("deployer", root, "a", 6, "y"),
                 spawn("deployer", root, "b", 6, "z")]
    collector = spawn("collector", root, stop, 500)
    readers = [spawn("reader", root, "a", stop, 2000), spawn("reader", root, "b", stop, 2000)]
    try:
        deployed = []
        for proc in deployers:
            code, events, err = finish(proc)
            assert code == 0, err  # no deploy failed because gc removed what it was writing
            deployed += events
    finally:
        stop.write_text("stop")
    code, gc_events, err = finish(collector)
    assert code == 0, err
    assert gc_events[-1]["rounds"] >= 1
    for proc in readers:
        code, events, err = finish(proc)
        assert code == 0, (err, [e for e in events if e["event"] == "error"])
        assert events[-1]["rounds"] >= 1

    # Version numbers are unique per model and every deploy got one.
    for model, expected in (("a", 12), ("b", 6)):
        numbers = [e["version"] for e in deployed if e["model"] == model]
        assert len(numbers) == expected and len(set(numbers)) == expected
    # No committed version lost an object, and every current tree is materialized.
    for model in ("a", "b"):
        manifest = repo.manifest(model)
        assert len(manifest.versions) >= 2
        for version in manifest.versions:
            repo.check_complete(version.tree)
        assert (root / "store" / "trees" / manifest.current_version().tree).is_dir()
    # After everything settles, one last gc leaves a store with nothing unreferenced.
    repo.cleanup(None, keep=2)
    repo.gc(grace=__import__("datetime").timedelta(0))
    assert repo.status().store.reclaimable_bytes == 0
