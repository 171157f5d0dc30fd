"""The default loaders with the real frameworks: CatBoost (.cbm and inside a joblib), TensorFlow
SavedModel (serving_default, and a Keras export), Keras .keras -- deployed, loaded through the
store's link, and served over real HTTP by the reference server, answers checked against the
framework's own predictions. gaia-cas imports none of them until a model of theirs is loaded."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import CHECKOUT
from gaia_cas import ModelHandle
from gaia_cas.server import InferenceServer

ROWS = np.random.default_rng(7).normal(size=(5, 4)).astype(np.float32)


def training(variant: int = 0):
    rng = np.random.default_rng(variant)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] + 0.2 * variant > 0).astype(np.int64)
    return x, y


class Served:
    """The reference server in this process on 127.0.0.1 (port 0), stopped by the test."""

    def __init__(self, root, *models):
        self.server = InferenceServer(list(models), root=root, port=0, interval=0.2).start()
        self.conn = http.client.HTTPConnection(*self.server.address, timeout=10)

    def request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        self.conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())

    def infer(self, model, name="input", rows=ROWS, datatype="FP32"):
        body = {"inputs": [{"name": name, "shape": list(rows.shape), "datatype": datatype,
                            "data": rows.reshape(-1).tolist()}]}
        return self.request("POST", f"/v2/models/{model}/infer", body)

    def close(self):
        self.conn.close()
        self.server.close()


@pytest.fixture
def serve(root):
    started = []

    def run(*models):
        started.append(Served(root, *models))
        return started[-1]

    yield run
    for served in started:
        served.close()


def outputs(doc) -> dict:
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in doc["outputs"]}


def test_importing_the_serving_modules_loads_no_framework():
    code = ("import sys; import gaia_cas, gaia_cas.loaders, gaia_cas.handle, gaia_cas.server, gaia_cas.oip; "
            "print(sorted(m for m in ('catboost', 'tensorflow', 'keras', 'onnxruntime', 'sklearn') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(CHECKOUT)), stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


# -- CatBoost ----------------------------------------------------------------------------------

@pytest.fixture
def catboost():
    return pytest.importorskip("catboost")


def classifier(catboost, variant=0):
    x, y = training(variant)
    return catboost.CatBoostClassifier(iterations=20, depth=3, verbose=False, thread_count=1,
                                       random_seed=variant).fit(x, y)


def test_a_catboost_cbm_is_loaded_as_the_classifier_it_was_and_served(repo, root, tmp_path, catboost, serve):
    model = classifier(catboost)
    path = tmp_path / "cb" / "model.cbm"
    path.parent.mkdir()
    model.save_model(str(path))
    repo.deploy("cb", path)
    with ModelHandle("cb", root=root) as handle:
        loaded, active = handle.get()
        assert isinstance(loaded, catboost.CatBoostClassifier) and active.version == "1.0.0"
    served = serve("cb")
    status, doc = served.infer("cb", name="anything")  # no input names: the one input, whatever its name
    assert status == 200 and doc["model_version"] == "1.0.0"
    got = outputs(doc)
    assert got["predict"].tolist() == model.predict(ROWS).tolist()
    assert np.allclose(got["predict_proba"], model.predict_proba(ROWS))
    status, doc = served.infer("cb", rows=ROWS[:, :3])
    assert status == 400 and "rejected the input" in doc["error"]
    assert served.infer("cb")[0] == 200  # and it keeps serving


def test_a_catboost_regressor_cbm_answers_predict_only(repo, root, tmp_path, catboost, serve):
    x, _ = training()
    model = catboost.CatBoostRegressor(iterations=20, depth=3, verbose=False, thread_count=1).fit(x, x[:, 2] * 3)
    path = tmp_path / "reg" / "model.cbm"
    path.parent.mkdir()
    model.save_model(str(path))
    repo.deploy("reg", path)
    status, doc = serve("reg").infer("reg")
    assert status == 200 and set(outputs(doc)) == {"predict"}
    assert np.allclose(outputs(doc)["predict"], model.predict(ROWS))


def test_a_catboost_model_in_a_joblib_is_served_and_switches_versions(repo, root, tmp_path, catboost, serve):
    import joblib
    import time

    models = [classifier(catboost, variant) for variant in (0, 1)]
    paths = []
    for variant, model in enumerate(models):
        path = tmp_path / f"j{variant}" / "model_catboost_best.joblib"
        path.parent.mkdir()
        joblib.dump(model, path)
        paths.append(path)
    repo.deploy("catboost", paths[0])
    served = serve("catboost")
    status, doc = served.infer("catboost")
    assert status == 200 and np.allclose(outputs(doc)["predict_proba"], models[0].predict_proba(ROWS))
    repo.deploy("catboost", paths[1])
    deadline = time.monotonic() + 10
    while doc["model_version"] != "1.1.0" and time.monotonic() < deadline:
        status, doc = served.infer("catboost")
        assert status == 200
    assert doc["model_version"] == "1.1.0"
    assert np.allclose(outputs(doc)["predict_proba"], models[1].predict_proba(ROWS))


# -- TensorFlow and Keras ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tf():
    tf = pytest.importorskip("tensorflow")
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


def saved_model(tf, folder, variant=0):
    x, y = training(variant)
    weights = np.linalg.lstsq(x, np.stack([y, 1 - y], axis=1).astype(np.float32), rcond=None)[0]

    class Linear(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(weights.astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="features")])
        def score(self, features):
            scores = tf.matmul(features, self.w)
            return {"scores": scores, "label": tf.argmax(scores, axis=1)}

    module = Linear()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.score})
    return lambda rows: {k: v.numpy() for k, v in module.score(tf.constant(rows)).items()}


def test_a_savedmodel_is_served_through_its_serving_default_signature(repo, root, tmp_path, tf, serve):
    local = saved_model(tf, tmp_path / "sm" / "saved_model")
    repo.deploy("ssd", tmp_path / "sm" / "saved_model")
    served = serve("ssd")
    status, meta = served.request("GET", "/v2/models/ssd")
    assert status == 200 and meta["platform"] == "tensorflow"
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {"label": "INT64", "scores": "FP32"}
    status, doc = served.infer("ssd", name="features")
    assert status == 200
    expected = local(ROWS)
    got = outputs(doc)
    assert got["label"].tolist() == expected["label"].tolist() and np.allclose(got["scores"], expected["scores"])
    for body, fragment in [(dict(name="x"), "inputs are 'features'"),
                           (dict(name="features", rows=ROWS.astype(np.float64), datatype="FP64"), "FP32 for this model"),
                           (dict(name="features", rows=ROWS[:, :3]), "takes [-1, 4]")]:
        status, doc = served.infer("ssd", **body)
        assert status == 400 and fragment in doc["error"], doc
    assert served.infer("ssd", name="features")[0] == 200


def keras_model(seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    return model


def test_a_keras_file_is_loaded_through_its_real_path_and_served(repo, root, tmp_path, tf, serve):
    model = keras_model()
    path = tmp_path / "k" / "classifier.keras"
    path.parent.mkdir()
    model.save(path)
    repo.deploy("k", path)
    link = root / "models" / "k" / "current"
    assert os.path.islink(link) and link.name == "current"  # the link itself has no .keras suffix
    with ModelHandle("k", root=root) as handle:
        loaded, _ = handle.get()
        assert np.allclose(loaded.predict_on_batch(ROWS), model.predict_on_batch(ROWS))
    served = serve("k")
    status, meta = served.request("GET", "/v2/models/k")
    assert status == 200 and meta["inputs"][0]["shape"] == [-1, 4]
    status, doc = served.infer("k")
    assert status == 200 and np.allclose(outputs(doc)["predict"], model.predict_on_batch(ROWS), atol=1e-6)


def test_a_keras_export_is_served_as_a_savedmodel(repo, root, tmp_path, tf, serve):
    model = keras_model(1)
    model.export(str(tmp_path / "export" / "saved_model"), verbose=False)
    repo.deploy("kx", tmp_path / "export" / "saved_model")
    served = serve("kx")
    status, meta = served.request("GET", "/v2/models/kx")
    name = meta["inputs"][0]["name"]
    status, doc = served.infer("kx", name=name)
    assert status == 200
    (value,) = outputs(doc).values()
    assert np.allclose(value, model.predict_on_batch(ROWS), atol=1e-6)
