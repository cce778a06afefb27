"""Reading model files: format detection, checks, signatures and predictors.

Pickle and joblib files run arbitrary code when loaded, so they are opened only
when the caller marks the file as trusted.
"""

import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mlhub_mcp.errors import InvalidInput, InvalidModelFile, UntrustedModelFile

FORMATS_BY_SUFFIX = {
    ".onnx": "onnx",
    ".pkl": "pickle",
    ".pickle": "pickle",
    ".joblib": "joblib",
    ".pt": "torchscript",
    ".pt2": "torch_export",
}
FRAMEWORKS = {
    "onnx": "onnx",
    "pickle": "scikit-learn",
    "joblib": "scikit-learn",
    "torchscript": "pytorch",
    "torch_export": "pytorch",
}
TASK_TYPES = ("classification", "regression", "text-generation", "other")

_ONNX_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


@dataclass
class ModelFileInfo:
    """Format, framework, task type and signature read from a model file."""

    format: str
    framework: str
    task_type: str
    signature: dict[str, Any] = field(default_factory=dict)


class Predictor(Protocol):
    """A loaded model that maps a feature matrix to predictions."""

    input_width: int | None

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Return the predictions and, for classifiers, the top-class probability."""
        ...


def detect_format(file_name: str, declared: str | None) -> str:
    """Return the model format from ``declared`` or from the file name's suffix.

    Raises:
        InvalidInput: The format is unknown.
    """
    if declared:
        if declared not in FRAMEWORKS:
            raise InvalidInput(
                f"unknown model format {declared!r}; use one of {sorted(FRAMEWORKS)}"
            )
        return declared

    suffix = Path(file_name).suffix.lower()
    if suffix not in FORMATS_BY_SUFFIX:
        raise InvalidInput(
            f"cannot tell the model format of {file_name!r} from its suffix; use one of "
            f"{sorted(FORMATS_BY_SUFFIX)} or pass 'format'"
        )

    return FORMATS_BY_SUFFIX[suffix]


def _onnx_shape(value_info: Any) -> list[int | None]:
    return [d if isinstance(d, int) else None for d in value_info.shape]


def _graph_tensors(graph: Any) -> Iterator[Any]:
    """Yield the initializers of ``graph`` and the tensors in its nodes' attributes."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices

    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Any) -> Iterator[Any]:
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _graph_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graph_tensors(subgraph)


def _reject_external_data(proto: Any) -> None:
    """Raise InvalidModelFile if a tensor of ``proto`` keeps its data in another file.

    Only the model file is stored, so such a model is rejected before onnx or
    onnxruntime could open the external files.
    """
    from onnx.external_data_helper import uses_external_data

    tensors = chain(_graph_tensors(proto.graph), *(_node_tensors(f.node) for f in proto.functions))
    locations = set()
    for tensor in tensors:
        if uses_external_data(tensor):
            entries = {entry.key: entry.value for entry in tensor.external_data}
            locations.add(entries.get("location", "")[:200])

    if locations:
        shown = sorted(locations)[:5]
        raise InvalidModelFile(
            f"ONNX models with external data files are not supported; this one keeps tensors "
            f"in {shown}. Save the model as one file, which works up to 2 GB: "
            "onnx.save_model(model, path, save_as_external_data=False)"
        )


def inspect_onnx(path: Path) -> ModelFileInfo:
    import onnx
    import onnxruntime as ort

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        # onnx raises many unrelated types for a damaged file.
        raise InvalidModelFile(f"not a valid ONNX model: {type(exc).__name__}: {exc}") from exc

    _reject_external_data(proto)
    try:
        onnx.checker.check_model(proto)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        # onnx and onnxruntime raise many unrelated types for a damaged file.
        raise InvalidModelFile(f"not a valid ONNX model: {type(exc).__name__}: {exc}") from exc

    inputs = [
        {"name": i.name, "dtype": i.type, "shape": _onnx_shape(i)} for i in session.get_inputs()
    ]
    outputs = [
        {"name": o.name, "dtype": o.type, "shape": _onnx_shape(o)} for o in session.get_outputs()
    ]

    first = outputs[0]["dtype"] if outputs else ""
    looks_like_classifier = len(outputs) >= 2 and first in ("tensor(int64)", "tensor(string)")
    task_type = "classification" if looks_like_classifier else "regression"

    signature = {"inputs": inputs, "outputs": outputs}
    if len(inputs) == 1 and len(inputs[0]["shape"]) == 2:
        signature["n_features"] = inputs[0]["shape"][1]

    return ModelFileInfo("onnx", "onnx", task_type, signature)


def _load_pickle(path: Path, fmt: str, trusted: bool) -> Any:
    if not trusted:
        raise UntrustedModelFile(
            f"{fmt} files run arbitrary code when loaded, so this one was not opened; "
            "export the model to ONNX (skl2onnx) or, if you trust the file's origin, "
            "register it again with trusted=true"
        )

    try:
        if fmt == "joblib":
            import joblib

            return joblib.load(path)
        with path.open("rb") as handle:
            return pickle.load(handle)
    except Exception as exc:
        raise InvalidModelFile(f"cannot load the {fmt} file: {type(exc).__name__}: {exc}") from exc


def inspect_sklearn(path: Path, fmt: str, trusted: bool) -> ModelFileInfo:
    from sklearn.base import is_classifier, is_regressor

    model = _load_pickle(path, fmt, trusted)
    if not hasattr(model, "predict"):
        raise InvalidModelFile(f"the object in the {fmt} file has no predict() method")

    signature: dict[str, Any] = {"estimator": type(model).__name__}
    if hasattr(model, "n_features_in_"):
        signature["n_features"] = int(model.n_features_in_)
    if hasattr(model, "feature_names_in_"):
        signature["feature_names"] = [str(n) for n in model.feature_names_in_]
    if hasattr(model, "classes_"):
        signature["classes"] = np.asarray(model.classes_).tolist()

    if is_classifier(model):
        task_type = "classification"
    elif is_regressor(model):
        task_type = "regression"
    else:
        task_type = "other"

    return ModelFileInfo(fmt, "scikit-learn", task_type, signature)


def inspect_model_file(
    path: Path, fmt: str, trusted: bool, preprocessing: dict[str, Any] | None = None
) -> ModelFileInfo:
    """Check a model file and read its signature; runs in a worker thread.

    Raises:
        InvalidModelFile: The file is damaged or is not a model of that format.
        UntrustedModelFile: A pickle or joblib file was not marked as trusted.
    """
    if fmt == "onnx":
        return inspect_onnx(path)
    if fmt in ("pickle", "joblib"):
        return inspect_sklearn(path, fmt, trusted)
    if fmt in ("torchscript", "torch_export"):
        from mlhub_mcp.models._torch import inspect_torch

        return inspect_torch(path, fmt, preprocessing, trusted)

    raise InvalidInput(f"unsupported model format {fmt!r}")


class OnnxPredictor:
    """Runs an ONNX model with onnxruntime on the CPU."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(threads, 0)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 2:
            raise InvalidModelFile(
                "only ONNX models with one 2-D input (rows x features) can run on tables; "
                f"this one has inputs {[(i.name, i.shape) for i in inputs]}"
            )
        self.input_name = inputs[0].name
        width = inputs[0].shape[1]
        self.input_width = width if isinstance(width, int) else None
        self.input_dtype = _ONNX_DTYPES.get(inputs[0].type, np.float32)

        outputs = self.session.get_outputs()
        first_shape = outputs[0].shape
        if len(first_shape) == 2 and isinstance(first_shape[1], int) and first_shape[1] > 1:
            raise InvalidModelFile(
                f"the model's output {outputs[0].name!r} has {first_shape[1]} values per row; "
                "only models with one prediction per row can run on tables"
            )
        self.output_names = [o.name for o in outputs]
        self._probability_index = None
        if len(outputs) >= 2 and outputs[1].type == "tensor(float)":
            self._probability_index = 1

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        feed = {self.input_name: np.ascontiguousarray(features, dtype=self.input_dtype)}
        results = self.session.run(None, feed)

        predictions = np.asarray(results[0])
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]

        scores = None
        if self._probability_index is not None:
            probabilities = np.asarray(results[self._probability_index])
            if probabilities.ndim == 2:
                scores = probabilities.max(axis=1)

        return predictions, scores


class SklearnPredictor:
    """Runs a scikit-learn estimator loaded from a trusted pickle or joblib file."""

    def __init__(self, path: Path, fmt: str, threads: int) -> None:
        self.model = _load_pickle(path, fmt, trusted=True)
        width = getattr(self.model, "n_features_in_", None)
        self.input_width = int(width) if width is not None else None

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        predictions = np.asarray(self.model.predict(features))
        scores = None
        if hasattr(self.model, "predict_proba"):
            scores = np.asarray(self.model.predict_proba(features)).max(axis=1)

        return predictions, scores


def load_predictor(path: Path, model: dict[str, Any], threads: int = 1) -> Predictor:
    """Load the model file of catalog entry ``model`` for inference.

    Raises:
        InvalidModelFile: The file cannot be loaded.
        UntrustedModelFile: The entry is a pickle or joblib file not marked as trusted.
    """
    fmt = model["format"]
    if fmt == "onnx":
        return OnnxPredictor(path, threads)
    if fmt in ("pickle", "joblib"):
        if not model.get("trusted"):
            raise UntrustedModelFile(f"model {model['name']!r} is not marked as trusted")
        return SklearnPredictor(path, fmt, threads)
    if fmt in ("torchscript", "torch_export"):
        from mlhub_mcp.models._torch import TorchPredictor

        return TorchPredictor(path, model, threads)

    raise InvalidModelFile(f"model format {fmt!r} cannot run on the local engine")
