"""The README's Python example runs as written (paths pointed at a temporary root), and the
reference's manifest schema matches what the encoder writes."""

from __future__ import annotations

import re

from conftest import CHECKOUT, make_savedmodel


def test_python_api_example_runs(root, tmp_path, capsys):
    readme = (CHECKOUT / "README.md").read_text()
    block = readme.split("Everything the CLI does is available from Python:", 1)[1]
    code = re.search(r"```python\n(.*?)```", block, re.S).group(1)
    make_savedmodel(tmp_path / "train" / "saved_model", 0)
    make_savedmodel(tmp_path / "train" / "saved_model_v2", 1)
    code = code.replace("/srv/gaia", str(root)).replace("/train/out", str(tmp_path / "train"))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    repo = scope["repo"]
    manifest = repo.manifest("ssd")
    assert manifest.current == "1.0.0" and manifest.channels["staging"]["version"] == "1.1.0"
    assert scope["report"].ok and '"changed"' in capsys.readouterr().out.replace("'", '"')


def test_manifest_schema_table_lists_exactly_the_keys_a_manifest_holds(repo, savedmodel):
    """Readers in other languages code against that table: it must not drift from the encoder."""
    import msgpack

    reference = (CHECKOUT / "docs" / "reference.md").read_text()
    section = reference.split("## The manifest schema", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    repo.deploy("ssd", savedmodel)
    stored = msgpack.unpackb((repo.layout.manifests / "ssd.msgpack").read_bytes())
    assert documented == set(stored)
