"""The Open Inference Protocol (v2), the part ``gaia-cas serve`` speaks: tensors in and out of
JSON, and how each kind of loaded model computes them.

Only the server imports this module, and numpy is imported here, never by the CLI's start-up.

    request  {"inputs": [{"name", "shape", "datatype", "data"}], "outputs": [{"name"}]?, "id"?}
    response {"model_name", "model_version", "id"?, "outputs": [{"name", "shape", "datatype", "data"}]}

Inputs are bound by name to the model's own inputs (an ONNX session's, a SavedModel signature's);
a model without input names (scikit-learn, CatBoost, Keras ``predict``) takes the request's one
input whatever it is called.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import InvalidInputError

DATATYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}
_BY_DTYPE = {np.dtype(t).str: name for name, t in DATATYPES.items() if name != "BYTES"}
_ONNX_TYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
               "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(int16)": "INT16",
               "tensor(int8)": "INT8", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
               "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(bool)": "BOOL",
               "tensor(string)": "BYTES"}


class BadRequest(InvalidInputError):
    """The request does not fit the protocol or the model: answered 400."""


def decode_inputs(document: Any) -> tuple[dict[str, np.ndarray], list[str] | None, Any]:
    """(inputs by name, requested output names or None, request id) of an infer request."""
    if not isinstance(document, dict):
        raise BadRequest("the request must be a JSON object with 'inputs'")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    result: dict[str, np.ndarray] = {}
    for tensor in inputs:
        if not isinstance(tensor, dict):
            raise BadRequest("each input must be an object with name, shape, datatype and data")
        name, shape, datatype, data = (tensor.get(k) for k in ("name", "shape", "datatype", "data"))
        if not isinstance(name, str) or not name:
            raise BadRequest("an input has no 'name'")
        if name in result:
            raise BadRequest(f"input {name!r} is given twice")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise BadRequest(f"input {name!r}: 'shape' must be a list of whole numbers, 0 or more")
        if datatype not in DATATYPES:
            raise BadRequest(f"input {name!r}: unknown datatype {datatype!r} (one of {', '.join(DATATYPES)})")
        result[name] = _tensor(name, shape, datatype, data)
    outputs = document.get("outputs")
    wanted = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                    for o in outputs):
            raise BadRequest("'outputs' must be a list of objects with a 'name'")
        wanted = [o["name"] for o in outputs]
    return result, wanted, document.get("id")


def _tensor(name: str, shape: list[int], datatype: str, data: Any) -> np.ndarray:
    if not isinstance(data, list):
        raise BadRequest(f"input {name!r}: 'data' must be a list")
    try:
        if datatype == "BYTES":
            flat = list(_flat(data))  # a list: numpy takes a generator for one object
            if not all(type(x) is str for x in flat):
                raise BadRequest(f"input {name!r}: BYTES data must be strings")
            array = np.empty(len(flat), dtype=object)
            array[:] = flat
        else:
            array = np.array(data, dtype=DATATYPES[datatype])
            if array.dtype == object:
                raise ValueError("ragged")
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequest(f"input {name!r}: 'data' is not {datatype} numbers of one shape ({exc})") from None
    if datatype not in ("BYTES", "BOOL") and not _numbers_only(data):
        raise BadRequest(f"input {name!r}: {datatype} data must be numbers")
    expected = math.prod(shape)  # numpy's prod costs more than the rest of a one-row decode
    if array.size != expected:
        raise BadRequest(f"input {name!r}: shape {shape} holds {expected} values, 'data' has {array.size}")
    return array.reshape(shape)


def _numbers_only(data: list) -> bool:
    """Whether nested lists hold only JSON numbers (not true/false, which numpy would take as 1/0,
    nor text, which it would parse): one pass, no generator per level."""
    pending = [data]
    while pending:
        for item in pending.pop():
            kind = type(item)
            if kind is float or kind is int:
                continue
            if kind is list:
                pending.append(item)
                continue
            return False
    return True


def _flat(data):
    for item in data:
        if isinstance(item, list):
            yield from _flat(item)
        else:
            yield item


def encode_output(name: str, value: Any) -> dict:
    array = np.asarray(value)
    if array.dtype.kind in "OUS":
        datatype = "BYTES"
        data = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in array.reshape(-1)]
    else:
        datatype = _BY_DTYPE.get(array.dtype.str)
        if datatype is None:
            array = array.astype(np.float64)
            datatype = "FP64"
        data = array.reshape(-1).tolist()
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}


# -- models ----------------------------------------------------------------------------------

def kind_of(model: Any) -> str:
    if hasattr(model, "get_inputs") and hasattr(model, "run"):
        return "onnx"
    signatures = getattr(model, "signatures", None)
    if signatures is not None and "serving_default" in signatures:
        return "savedmodel"
    if hasattr(model, "serve") and callable(model.serve) and not hasattr(model, "predict"):
        return "keras-export"
    if hasattr(model, "predict"):
        return "predictor"
    raise BadRequest(f"a {type(model).__name__} cannot be served: it has no predict, run or serving signature")


def metadata(model: Any) -> dict:
    """The model's inputs and outputs, as GET /v2/models/{name} lists them."""
    kind = kind_of(model)
    if kind == "onnx":
        def tensors(items):
            return [{"name": t.name, "datatype": _ONNX_TYPES.get(t.type, t.type),
                     "shape": [d if isinstance(d, int) else -1 for d in t.shape]} for t in items]
        return {"platform": "onnxruntime", "inputs": tensors(model.get_inputs()),
                "outputs": tensors(model.get_outputs())}
    if kind == "savedmodel":
        signature = model.signatures["serving_default"]
        inputs = [{"name": n, "datatype": _tf_type(s), "shape": _tf_shape(s)}
                  for n, s in sorted(signature.structured_input_signature[1].items())]
        outputs = [{"name": n, "datatype": _tf_type(s), "shape": _tf_shape(s)}
                   for n, s in sorted(signature.structured_outputs.items())]
        return {"platform": "tensorflow", "inputs": inputs, "outputs": outputs}
    features = getattr(model, "n_features_in_", None)
    shape = [-1, int(features)] if isinstance(features, (int, np.integer)) else [-1, -1]
    if _is_keras(model):
        try:
            shape = [-1 if d is None else int(d) for d in model.input_shape]
        except (AttributeError, TypeError, ValueError):  # several inputs, or not built
            pass
    outputs = [{"name": "predict", "datatype": "", "shape": [-1]}]
    if _has(model, "predict_proba"):
        outputs.append({"name": "predict_proba", "datatype": "FP64", "shape": [-1, -1]})
    name = "serve" if kind == "keras-export" else "input"
    return {"platform": type(model).__module__.split(".")[0], "inputs": [{"name": name, "datatype": "FP64",
                                                                          "shape": shape}],
            "outputs": [] if kind == "keras-export" else outputs}


def _tf_type(spec) -> str:
    return {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32", "string": "BYTES",
            "bool": "BOOL", "uint8": "UINT8", "float16": "FP16"}.get(spec.dtype.name, spec.dtype.name)


def _tf_shape(spec) -> list[int]:
    return [-1 if d is None else int(d) for d in spec.shape]


def _has(model: Any, name: str) -> bool:
    try:
        return callable(getattr(model, name, None))
    except Exception:  # scikit-learn raises AttributeError-like errors from properties
        return False


class Served:
    """A loaded model with what every request to it needs worked out once, at its first request
    (its kind, its metadata, its output names), instead of on every request."""

    __slots__ = ("model", "kind", "metadata", "outputs", "sklearn")

    def __init__(self, model: Any):
        self.model = model
        self.kind = kind_of(model)
        self.metadata = metadata(model)
        self.outputs = frozenset(o["name"] for o in self.metadata["outputs"])
        self.sklearn = self.kind == "predictor" and type(model).__module__.startswith("sklearn.")

    def infer(self, inputs: dict[str, np.ndarray], wanted: list[str] | None = None) -> list[tuple[str, Any]]:
        if wanted is not None and self.outputs:
            missing = [w for w in wanted if w not in self.outputs]
            if missing:
                raise BadRequest(f"unknown output {missing[0]!r} (outputs: {', '.join(sorted(self.outputs))})")
        if self.sklearn and _finite(inputs):
            # scikit-learn checks every input for NaN and infinity again in each of predict and
            # predict_proba; the input was just found finite, so it is told so (a third of
            # their time for one row). An output that is not finite then is computed again with
            # every check on, so the answer is what scikit-learn alone would give.
            import sklearn

            with sklearn.config_context(assume_finite=True):
                outputs = infer(self.model, inputs, wanted, self.kind)
            if _finite(dict(outputs)):
                return outputs
        return infer(self.model, inputs, wanted, self.kind)


def _finite(arrays: dict) -> bool:
    for value in arrays.values():
        if not (isinstance(value, np.ndarray) and value.dtype.kind in "biuf"):
            return False
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return False
    return True


def infer(model: Any, inputs: dict[str, np.ndarray], wanted: list[str] | None = None,
          kind: str | None = None) -> list[tuple[str, Any]]:
    """Run the model on the request's inputs: [(output name, value)], in the model's order.

    ``wanted`` (the request's ``outputs``) limits what a scikit-learn-like model computes: each
    of predict and predict_proba costs a full pass (~0.25 ms for a small LogisticRegression).
    """
    kind = kind or kind_of(model)
    if kind == "onnx":
        expected = [i.name for i in model.get_inputs()]
        feeds = _bind(inputs, expected)
        names = [o.name for o in model.get_outputs()]
        return list(zip(names, _computed(lambda: model.run(names, feeds))))
    if kind == "savedmodel":
        import tensorflow as tf

        signature = model.signatures["serving_default"]
        specs = signature.structured_input_signature[1]
        feeds = _bind(inputs, sorted(specs))
        for name, value in feeds.items():
            _check_spec(name, value, specs[name])
        result = _computed(lambda: signature(**{k: tf.constant(v) for k, v in feeds.items()}))
        return [(name, value.numpy()) for name, value in sorted(result.items())]
    (name, array), = _single(inputs)
    if kind == "keras-export":
        result = _computed(lambda: model.serve(array))
        if isinstance(result, dict):
            return [(k, np.asarray(v)) for k, v in sorted(result.items())]
        return [("output_0", np.asarray(result))]
    outputs = []
    if _is_keras(model):  # predict() builds a dataset pipeline per call; one batch needs none
        return [("predict", np.asarray(_computed(lambda: model.predict_on_batch(array))))]
    if wanted is None or "predict" in wanted:
        outputs.append(("predict", _computed(lambda: model.predict(array))))
    if (wanted is None or "predict_proba" in wanted) and _has(model, "predict_proba"):
        outputs.append(("predict_proba", _computed(lambda: model.predict_proba(array))))
    return outputs


def _is_keras(model: Any) -> bool:
    return type(model).__module__.startswith(("keras.", "tf_keras.")) and hasattr(model, "predict_on_batch")


def _check_spec(name: str, value: np.ndarray, spec) -> None:
    """A request tensor that cannot fit a SavedModel signature's input is the client's error."""
    wanted = _tf_type(spec)
    got = _BY_DTYPE.get(value.dtype.str, "BYTES" if value.dtype.kind in "OUS" else value.dtype.name)
    if wanted != got:
        raise BadRequest(f"input {name!r} is {wanted} for this model, not {got}")
    dims = [-1 if d is None else int(d) for d in spec.shape] if spec.shape.rank is not None else None
    if dims is not None and (len(dims) != value.ndim or any(d not in (-1, v) for d, v in zip(dims, value.shape))):
        raise BadRequest(f"input {name!r} has shape {list(value.shape)}; the model takes {dims} (-1: any)")


def _single(inputs: dict[str, np.ndarray]):
    if len(inputs) != 1:
        raise BadRequest(f"this model takes one input; the request has {len(inputs)}")
    return list(inputs.items())


def _bind(inputs: dict[str, np.ndarray], expected: list[str]) -> dict[str, np.ndarray]:
    unknown = sorted(set(inputs) - set(expected))
    missing = sorted(set(expected) - set(inputs))
    if unknown or missing:
        raise BadRequest(f"the model's inputs are {', '.join(map(repr, expected))}"
                         + (f"; missing {', '.join(map(repr, missing))}" if missing else "")
                         + (f"; unknown {', '.join(map(repr, unknown))}" if unknown else ""))
    return {name: inputs[name] for name in expected}


def _computed(compute):
    """The model's own refusal of an input (wrong width, wrong type) is the client's error."""
    try:
        return compute()
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise BadRequest(f"the model rejected the input: {_first_line(exc)}") from None
    except Exception as exc:
        module, name = type(exc).__module__, type(exc).__name__
        if (module.startswith("onnxruntime") and name in ("InvalidArgument", "Fail")
                or module.startswith(("_catboost", "catboost")) and name == "CatBoostError"
                or module.startswith("tensorflow") and name == "InvalidArgumentError"):
            raise BadRequest(f"the model rejected the input: {_first_line(exc)}") from None
        raise


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
