"""BYTES tensors: text inputs reach a model as strings (a scikit-learn text pipeline in a joblib)."""

from __future__ import annotations

import pytest

from gaia_cas import oip
from test_serving_server import outputs_of, start  # noqa: F401

TEXTS = ["a fine and good film", "bad, dull and long", "good", "long and bad"]


def text_pipeline(path):
    import joblib
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(CountVectorizer(), LogisticRegression()).fit(
        ["good film", "fine good", "bad film", "dull bad long", "good fine film", "long dull"], [1, 1, 0, 0, 1, 0])
    path.parent.mkdir(parents=True)
    joblib.dump(model, path)
    return model


def test_bytes_data_decodes_to_strings_of_the_given_shape():
    inputs, _, _ = oip.decode_inputs({"inputs": [{"name": "t", "shape": [2, 2], "datatype": "BYTES",
                                                  "data": [["a", "b"], ["c", "d"]]}]})
    assert inputs["t"].shape == (2, 2) and inputs["t"].tolist() == [["a", "b"], ["c", "d"]]
    with pytest.raises(oip.BadRequest, match="must be strings"):
        oip.decode_inputs({"inputs": [{"name": "t", "shape": [2], "datatype": "BYTES", "data": ["a", 1]}]})


def test_a_text_model_is_served_from_bytes_inputs(repo, tmp_path, start):  # noqa: F811
    model = text_pipeline(tmp_path / "src" / "text.joblib")
    repo.deploy("text", tmp_path / "src" / "text.joblib")
    server = start("text")
    body = {"inputs": [{"name": "text", "shape": [len(TEXTS)], "datatype": "BYTES", "data": TEXTS}]}
    status, doc = server.request("POST", "/v2/models/text/infer", body)
    assert status == 200, doc
    assert outputs_of(doc)["predict"] == model.predict(TEXTS).tolist()
