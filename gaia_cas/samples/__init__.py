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


def foreign_models(repo) -> list[str]:
    """The models of ``repo`` the demo did not make: any model that is not a sample, or a sample
    name whose configured source or any version came from somewhere else."""
    foreign = []
    for name in repo.models():
        spec = SAMPLES.get(name)
        manifest = repo.manifest(name)
        expected = str(spec["source"]) if spec else None
        if spec is None or manifest.config.source != expected or \
                any(v.source != expected for v in manifest.versions):
            foreign.append(name)
    return foreign


def register_samples(repo) -> list:
    """Register the sample models (once) and deploy them; a second run reports 'unchanged'.

    The samples are 10 KB stand-ins: deployed into a root that holds a team's real models they
    would become its current versions and swing its links. So the demo runs only in an empty
    root or in one that only the demo has filled, and refuses any other before writing.
    """
    from ..errors import InvalidInputError

    foreign = foreign_models(repo)
    if foreign:
        raise InvalidInputError(
            f"demo deploys bundled sample models and runs only in an empty root or one the demo filled; "
            f"{repo.root} holds {', '.join(foreign)}. Run it in a root of its own: "
            f"gaia-cas init /tmp/gaia-demo && gaia-cas --root /tmp/gaia-demo demo")
    results = []
    for name, spec in SAMPLES.items():
        if name not in repo.models():
            repo.add_model(name, aliases=spec["aliases"], source=str(spec["source"]),
                           metadata=spec["metadata"], reason="sample model")
        results.append(repo.deploy(name, spec["source"], reason="sample deploy"))
    return results
