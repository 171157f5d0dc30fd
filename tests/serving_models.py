"""Small real models for the serving tests: scikit-learn LogisticRegression (joblib) and ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FEATURES = 4


def training_data(variant: int):
    rng = np.random.default_rng(variant)
    x = rng.normal(size=(64, FEATURES)).astype(np.float32)
    weights = rng.normal(size=FEATURES)
    y = (x @ weights + 0.1 * variant > 0).astype(np.int64)
    if y.min() == y.max():
        y[0] = 1 - y[0]
    return x, y


def logistic(variant: int):
    from sklearn.linear_model import LogisticRegression

    x, y = training_data(variant)
    return LogisticRegression(C=0.5 + variant).fit(x, y)


def write_joblib(path: Path, variant: int) -> Path:
    import joblib

    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(logistic(variant), path)
    return path


def write_onnx(path: Path, variant: int) -> Path:
    from skl2onnx import to_onnx

    x, _ = training_data(variant)
    onx = to_onnx(logistic(variant), x[:1], options={"zipmap": False}, target_opset=15)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onx.SerializeToString())
    return path


def sample_rows(n: int = 16):
    return np.random.default_rng(1234).normal(size=(n, FEATURES)).astype(np.float32)
