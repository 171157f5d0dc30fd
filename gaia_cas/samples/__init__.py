"""Two tiny sample models shaped like Gaia Vision's, for the quick start and the tests.

``ssd_mobilenet_v2/`` has the layout of a TensorFlow SavedModel (``saved_model.pb`` and
``variables/``) and ``catboost/model_catboost_best.joblib`` is a protocol-4 pickle of a plain
dict, as joblib writes one; the bytes are small stand-ins, not trained weights.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent

SAMPLES = {
    "ssd": {
        "aliases": ["dl"],
        "source": HERE / "ssd_mobilenet_v2",
        "metadata": {
            "architecture": "SSD MobileNet V2", "input_size": [320, 320],
            "classes": ["fungal_contamination"], "detection_threshold": 0.5, "framework": "tensorflow",
        },
    },
    "catboost": {
        "aliases": ["ml"],
        "source": HERE / "catboost" / "model_catboost_best.joblib",
        "metadata": {
            "architecture": "CatBoostClassifier", "classes": ["clean", "contaminated"],
            "detection_threshold": 0.5, "framework": "catboost",
        },
    },
}


def register_samples(repo) -> list:
    """Register the sample models (once) and deploy them; a second run reports 'unchanged'."""
    results = []
    for name, spec in SAMPLES.items():
        if name not in repo.models():
            repo.add_model(name, aliases=spec["aliases"], source=str(spec["source"]),
                           metadata=spec["metadata"], reason="sample model")
        results.append(repo.deploy(name, spec["source"], reason="sample deploy"))
    return results
