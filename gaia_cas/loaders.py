"""Default loaders, chosen by the format gaia-cas detects (gaia_cas/formats.py).

Each framework is imported by the one loader that needs it, when it is first used: serving a
joblib never imports onnxruntime, and none of them is a dependency of gaia-cas.

Unpickling (joblib, pickle) runs code from the file: load only what you deployed yourself.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import GaiaCasError


class UnsupportedFormatError(GaiaCasError):
    """No default loader for this format, or its framework is not installed."""


def _need(module: str, package: str, fmt: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UnsupportedFormatError(f"loading a {fmt} model needs the '{package}' package: "
                                     f"pip install {package}") from None


def load_pickle(path: Path):
    """joblib.load where joblib is installed (it reads plain pickles too), else pickle.load."""
    try:
        import joblib
    except ImportError:
        import pickle

        with open(path, "rb") as f:
            return pickle.load(f)
    return joblib.load(path)


def load_onnx(path: Path):
    ort = _need("onnxruntime", "onnxruntime", "ONNX")
    return ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])


_CATBOOST_CLASSIFICATION = {"Logloss", "CrossEntropy", "MultiClass", "MultiClassOneVsAll", "MultiLogloss",
                            "MultiCrossEntropy"}


def load_catboost(path: Path):
    """A ``.cbm`` as the class that trained it: a classifier (``predict`` gives classes, and
    ``predict_proba``), a regressor, or the plain model (rankers: raw scores)."""
    catboost = _need("catboost", "catboost", "CatBoost")
    model = catboost.CatBoost()
    model.load_model(os.fspath(path))
    loss = str(model.get_all_params().get("loss_function", "")).split(":", 1)[0]
    if loss in _CATBOOST_CLASSIFICATION:
        kind = catboost.CatBoostClassifier
    elif any(word in loss for word in ("Rank", "Pair", "Query")):
        return model
    else:
        kind = catboost.CatBoostRegressor
    typed = kind()
    typed.load_model(os.fspath(path))
    return typed


def load_savedmodel(path: Path):
    tf = _need("tensorflow", "tensorflow", "TensorFlow SavedModel")
    folder = path if path.is_dir() else path.parent  # a single saved_model.pb deployed as a file
    return tf.saved_model.load(os.fspath(folder))


def load_keras(path: Path):
    keras = _need("keras", "keras", "Keras")
    # The real path, with its suffix: Keras refuses a .keras reached through a link without one.
    return keras.saving.load_model(os.path.realpath(path))


LOADERS = {
    "joblib": load_pickle, "pickle": load_pickle, "onnx": load_onnx, "catboost": load_catboost,
    "savedmodel": load_savedmodel, "keras": load_keras, "keras-h5": load_keras,
}


def load(path: str | os.PathLike):
    """Load the model at ``path`` with the loader for its detected format."""
    from .formats import detect

    path = Path(path)
    fmt = detect(path)
    loader = LOADERS.get(fmt)
    if loader is None:
        raise UnsupportedFormatError(f"no default loader for {path.name} (format {fmt}); "
                                     f"pass loader=... (formats: {', '.join(sorted(LOADERS))})")
    return loader(path)
