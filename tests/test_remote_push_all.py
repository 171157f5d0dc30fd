"""push all reports each model, against moto on 127.0.0.1 (or $GAIA_CAS_S3_ENDPOINT): one model
failing -- a corrupt local object, a stale current left alone -- hides none of the others'
results; each model gets its line, the exit status is 1, --json lists every model with an
``error`` for the failed ones."""

from __future__ import annotations

import os

import pytest

from conftest import make_savedmodel
from gaia_cas.repo import Repository
from s3_fixtures import s3_server, s3_url  # noqa: F401


@pytest.fixture
def origin(cli, root, s3_server):  # noqa: F811
    url = s3_url(s3_server)
    assert cli("remote", "add", "origin", url, "--endpoint", s3_server.endpoint).code == 0
    return url, s3_server.endpoint


def _corrupt_one_object(root, model):
    repo = Repository(root)
    tree = repo.manifest(model).current_version().tree
    oid = next(e.oid for _, e in repo.trees.walk(tree) if e.name == "saved_model.pb")
    path = repo.objects.path(oid)
    os.chmod(path, 0o644)
    path.write_bytes(b"rotten")
    return oid


def test_push_all_reports_every_model_and_fails_when_one_failed(cli, root, origin, tmp_path):
    for model, variant in (("alpha", 1), ("beta", 2), ("gamma", 3)):
        assert cli("deploy", model, make_savedmodel(tmp_path / model, variant=variant)).code == 0
    assert cli("push", "gamma").code == 0
    # gamma: the remote's current moves where this store has not looked
    operator = tmp_path / "operator"
    Repository.init(operator)
    cli("remote", "add", "origin", origin[0], "--endpoint", origin[1], root_dir=operator)
    cli("deploy", "gamma", make_savedmodel(tmp_path / "g2", variant=4))
    assert cli("push", "gamma").code == 0
    assert cli("rollback", "gamma", "1.0.0", "--remote", "origin", root_dir=operator).code == 0
    cli("deploy", "gamma", make_savedmodel(tmp_path / "g3", variant=5))
    bad = _corrupt_one_object(root, "beta")  # beta: a corrupt local object is never spread
    run = cli("push", "all", "--json")
    assert run.code == 1
    results = {r["model"]: r for r in run.json()["pushed"]}
    assert list(results) == ["alpha", "beta", "gamma"]
    assert results["alpha"]["error"] is None and results["alpha"]["versions_sent"] == 1
    assert bad in results["beta"]["error"] and "does not match its hash" in results["beta"]["error"]
    assert results["beta"]["versions_sent"] == 0
    assert "not moved" in results["gamma"]["error"] and results["gamma"]["versions_sent"] == 1
    remote = Repository(root).remote("origin")
    assert remote.manifest("alpha").current == "1.0.0"
    assert remote.manifest("gamma").current == "1.0.0"  # production left where the operator put it
    text = cli("push")  # 'all' is the default
    assert text.code == 1
    assert "alpha: 0 versions" in text.out and "gamma: 0 versions" in text.out  # alpha and gamma report
    errors = text.err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("gaia-cas: error: push of ") for line in errors)
    assert "push of beta failed" in errors[0] and bad in errors[0]
    assert "push of gamma failed" in errors[1] and "not moved" in errors[1]
    assert "Traceback" not in text.err


def test_push_of_one_model_that_fails_is_one_line(cli, root, origin, tmp_path):
    from conftest import assert_one_line_error

    cli("deploy", "beta", make_savedmodel(tmp_path / "b", variant=2))
    bad = _corrupt_one_object(root, "beta")
    assert_one_line_error(cli("push", "beta"), bad, "does not match its hash")
    assert_one_line_error(cli("push", "nothere"), "unknown model 'nothere'")
