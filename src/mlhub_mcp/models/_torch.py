"""PyTorch model files: TorchScript (.pt) and torch.export programs (.pt2).

Both formats carry the model's code with its weights. A file written by
``torch.save`` (a state_dict or a pickled module) does not, so it is rejected
with the commands that export a usable file.
"""

import io
import json
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlhub_mcp.errors import InvalidInput, InvalidModelFile, SchemaMismatch, UntrustedModelFile
from mlhub_mcp.models._formats import ModelFileInfo

EXPORT_HINT = (
    "save the model together with its code: torch.jit.script(model).save('model.pt'), or "
    "torch.export.save(torch.export.export(model, (example,)), 'model.pt2') where example "
    "is one input batch"
)

# ITU-R 601-2 luma weights, as in Pillow's Image.convert("L") (PIL/Image.py).
_LUMA = (0.299, 0.587, 0.114)

# Members that torch.export.save writes under the archive's root folder.
# torch.export.load also reads compiled AOTInductor libraries and other members,
# so an archive containing anything else is rejected before torch opens it.
_EXPORT_MEMBERS = (
    "archive_format",
    "archive_version",
    "byteorder",
    ".data/",
    "models/",
    "data/weights/",
    "data/constants/",
    "data/sample_inputs/",
    "extra/",
)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise InvalidModelFile(
            "PyTorch models need the 'torch' extra: pip install 'mlhub-mcp[torch]'"
        ) from None
    return torch


def _default_device(torch: Any) -> Any:
    # NOTE: the CUDA branch (map_location, move_to_device_pass, tensors built
    # on the batch's device) has only been tested on CPU-only machines.
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Preprocessing:
    """Input preparation declared with a model, applied to image batches."""

    resize: tuple[int, int] | None = None
    divisor: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    bgr: bool = False
    layout: str = "chw"
    input_shape: tuple[int, ...] | None = None
    outputs: str = "logits"


_PREPROCESSING_KEYS = (
    "resize",
    "scale",
    "mean",
    "std",
    "channel_order",
    "layout",
    "input_shape",
    "output",
)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_ints(raw: Any, key: str, lengths: tuple[int, ...]) -> tuple[int, ...]:
    valid = (
        isinstance(raw, list | tuple)
        and len(raw) in lengths
        and all(_is_integer(v) and v > 0 for v in raw)
    )
    if not valid:
        counts = " or ".join(str(n) for n in lengths)
        raise InvalidInput(
            f"preprocessing {key!r} must be a list of {counts} positive integers; got {raw!r}"
        )

    return tuple(raw)


def _resize(raw: Any) -> tuple[int, int] | None:
    if raw is None:
        return None

    height, width = _positive_ints([raw, raw] if _is_integer(raw) else raw, "resize", (2,))
    return height, width


def _numbers(raw: Any, key: str) -> tuple[float, ...]:
    values = [raw] if isinstance(raw, float) or _is_integer(raw) else raw
    valid = (
        isinstance(values, list | tuple)
        and len(values) >= 1
        and all(isinstance(v, float) or _is_integer(v) for v in values)
    )
    if not valid:
        raise InvalidInput(f"preprocessing {key!r} must be a number per channel; got {raw!r}")

    return tuple(float(v) for v in values)


def _divisor(raw: Any) -> float | None:
    if raw is None or raw is False:
        return None
    if raw is True:
        return 255.0
    if isinstance(raw, int | float) and raw > 0:
        return float(raw)

    raise InvalidInput(
        f"preprocessing 'scale' must be true (divide pixels by 255) or a positive divisor; "
        f"got {raw!r}"
    )


def _choice(raw: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = raw.get(key, choices[0])
    if value not in choices:
        raise InvalidInput(f"preprocessing {key!r} must be one of {choices}; got {value!r}")

    return value


def check_preprocessing(raw: Mapping[str, Any] | None) -> Preprocessing:
    """Validate the preprocessing settings given with a model.

    Keys:

    - ``resize``: [height, width] of the model's input.
    - ``scale``: true to divide pixel values by 255, or another divisor.
    - ``mean`` and ``std``: one value per channel (or one for all), applied after ``scale``.
    - ``channel_order``: "rgb" (default) or "bgr".
    - ``layout``: "chw" (default) or "hwc", the model's input layout.
    - ``input_shape``: one sample in that layout, such as [3, 32, 32].
    - ``output``: "logits" (default, softmax is applied) or "probabilities".

    Raises:
        InvalidInput: A key is unknown or a value is invalid.
    """
    raw = dict(raw or {})
    unknown = sorted(set(raw) - set(_PREPROCESSING_KEYS))
    if unknown:
        raise InvalidInput(
            f"unknown preprocessing keys {unknown}; known keys: {list(_PREPROCESSING_KEYS)}"
        )

    mean = _numbers(raw["mean"], "mean") if raw.get("mean") is not None else None
    std = _numbers(raw["std"], "std") if raw.get("std") is not None else None
    if std is not None and any(v <= 0 for v in std):
        raise InvalidInput(f"preprocessing 'std' values must be positive; got {list(std)}")

    input_shape = raw.get("input_shape")
    return Preprocessing(
        resize=_resize(raw.get("resize")),
        divisor=_divisor(raw.get("scale")),
        mean=mean,
        std=std,
        bgr=_choice(raw, "channel_order", ("rgb", "bgr")) == "bgr",
        layout=_choice(raw, "layout", ("chw", "hwc")),
        input_shape=(
            _positive_ints(input_shape, "input_shape", (1, 2, 3))
            if input_shape is not None
            else None
        ),
        outputs=_choice(raw, "output", ("logits", "probabilities")),
    )


# Reading the file


def _archive_root(names: list[str]) -> str | None:
    for name in names:
        if name.count("/") == 1 and name.endswith("/archive_format"):
            return name.split("/", 1)[0] + "/"
    return None


def _content_kind(path: Path) -> str:
    """Return what the file contains: torchscript, torch_export, torch_save or unknown."""
    if not zipfile.is_zipfile(path):
        # torch.save with _use_new_zipfile_serialization=False writes a bare pickle.
        return "torch_save"

    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()

    members = {name.split("/", 1)[1] for name in names if "/" in name}
    if _archive_root(names) is not None:
        return "torch_export"
    if "constants.pkl" in members:
        return "torchscript"
    if "data.pkl" in members:
        return "torch_save"
    return "unknown"


def _reject_saved_object(torch: Any, path: Path) -> None:
    """Raise the error that explains what a ``torch.save`` file contains."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InvalidModelFile(
            "the file contains a Python object pickled with torch.save, which is not loaded "
            f"because unpickling it could run code from the file; {EXPORT_HINT}"
        ) from None
    except Exception as exc:
        # torch.load raises KeyError, RuntimeError and others for files it cannot read.
        raise InvalidModelFile(
            f"not a TorchScript or torch.export file ({type(exc).__name__}: {exc}); {EXPORT_HINT}"
        ) from exc

    if isinstance(content, Mapping):
        raise InvalidModelFile(
            "the file contains a state_dict (tensors without the model's code), and running it "
            f"needs the model's Python class; {EXPORT_HINT}"
        )

    raise InvalidModelFile(
        f"the file contains a {type(content).__name__} saved with torch.save, not a model; "
        f"{EXPORT_HINT}"
    )


def _check_weights_only(torch: Any, archive: zipfile.ZipFile, name: str) -> None:
    try:
        torch.load(io.BytesIO(archive.read(name)), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidModelFile(
            f"member {name!r} of the torch.export archive contains pickled objects other than "
            f"tensors, which are not loaded because they could run code ({type(exc).__name__})"
        ) from None


def _pickled_payloads(archive: zipfile.ZipFile, config_name: str, folder: str) -> list[str]:
    """Return the members a payload config marks as pickled; reject non-tensor constants."""
    try:
        config = json.loads(archive.read(config_name))["config"]
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidModelFile(
            f"invalid {config_name!r} in the torch.export archive: {exc}"
        ) from exc

    pickled = []
    for fqn, payload in config.items():
        path_name = str(payload.get("path_name", ""))
        if folder.endswith("constants/") and not path_name.startswith("tensor_"):
            raise InvalidModelFile(
                f"constant {fqn!r} of the torch.export archive is a Python or TorchBind object "
                f"({path_name!r}); only programs whose constants are tensors can be loaded"
            )
        if payload.get("use_pickle"):
            pickled.append(folder + path_name)

    return pickled


def _check_export_archive(torch: Any, path: Path) -> None:
    """Reject a .pt2 archive that torch.export.load would unpickle unsafely.

    In torch 2.13 (torch/export/pt2_archive/_package.py), torch.export.load
    unpickles pickled weights and constants with weights_only=False, pickled
    opaque constants with pickle.loads, and loads AOTInductor libraries from
    data/aotinductor/. Each pickled member is loaded here with weights_only=True
    first, so only tensors pass.
    """
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        root = _archive_root(names)
        if root is None:
            raise InvalidModelFile("not a torch.export archive: it has no archive_format entry")

        members = [name[len(root) :] for name in names if not name.endswith("/")]
        for name in names:
            member = name[len(root) :]
            if name.endswith("/"):
                continue
            if not name.startswith(root) or not member.startswith(_EXPORT_MEMBERS):
                raise InvalidModelFile(
                    f"the torch.export archive contains {name!r}, which this server does not load "
                    "(compiled AOTInductor code or unknown content); save the program with "
                    "torch.export.save only"
                )

        pickled = [m for m in members if m.startswith("data/sample_inputs/")]
        for member in members:
            if member.endswith("_weights_config.json"):
                pickled += _pickled_payloads(archive, root + member, "data/weights/")
            elif member.endswith("_constants_config.json"):
                pickled += _pickled_payloads(archive, root + member, "data/constants/")
            elif member.startswith(("data/weights/", "data/constants/")) and member.endswith(".pt"):
                pickled.append(member)

        for member in pickled:
            _check_weights_only(torch, archive, root + member)


def _load(torch: Any, path: Path, device: Any, trusted: bool) -> tuple[Any, Any, str]:
    """Load a model file; return the module, the export program (or None) and the format."""
    kind = _content_kind(path)
    if kind == "torch_save":
        _reject_saved_object(torch, path)
    if kind == "unknown":
        raise InvalidModelFile(
            f"the file is a zip archive but neither a TorchScript nor a torch.export file; "
            f"{EXPORT_HINT}"
        )

    if kind == "torchscript":
        # The torch.jit.load documentation warns that a crafted TorchScript file
        # can run code when loaded, and its content cannot be vetted like a .pt2
        # archive's, so it loads only when the registration trusts it.
        if not trusted:
            raise UntrustedModelFile(
                "TorchScript files can run code when loaded, so this one was not opened; "
                "export the model with torch.export (.pt2) or, if you trust the file's "
                "origin, register it again with trusted=true"
            )
        try:
            module = torch.jit.load(str(path), map_location=device)
        except Exception as exc:
            raise InvalidModelFile(
                f"cannot load the TorchScript file: {type(exc).__name__}: {exc}"
            ) from exc
        module.eval()
        return module, None, "torchscript"

    _check_export_archive(torch, path)
    try:
        # A file object, because torch.export.load expects a name ending in .pt2
        # and the artifact store names files by digest.
        with path.open("rb") as handle:
            program = torch.export.load(handle)
        if device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, device)
        module = program.module()
    except Exception as exc:
        raise InvalidModelFile(
            f"cannot load the torch.export program: {type(exc).__name__}: {exc}"
        ) from exc

    return module, program, "torch_export"


# Signatures


def _tensor_spec(name: str, value: Any) -> dict[str, Any]:
    """Describe a graph input or output; symbolic dimensions become None."""
    dtype = getattr(value, "dtype", None)
    shape = getattr(value, "shape", None)
    spec: dict[str, Any] = {"name": name, "dtype": type(value).__name__, "shape": None}
    if dtype is not None:
        spec["dtype"] = str(dtype).removeprefix("torch.")
    if shape is not None:
        spec["shape"] = [d if isinstance(d, int) else None for d in shape]

    return spec


def _export_specs(program: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    nodes = {node.name: node for node in program.graph.nodes}
    signature = program.graph_signature

    def spec(name: str) -> dict[str, Any]:
        node = nodes.get(name)
        return _tensor_spec(name, node.meta.get("val") if node is not None else None)

    return [spec(n) for n in signature.user_inputs], [spec(n) for n in signature.user_outputs]


def _script_specs(module: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    schema = module.forward.schema
    inputs = [{"name": a.name, "dtype": str(a.type), "shape": None} for a in schema.arguments[1:]]
    outputs = [
        {"name": r.name or f"output_{i}", "dtype": str(r.type), "shape": None}
        for i, r in enumerate(schema.returns)
    ]
    return inputs, outputs


def _output_width(shape: list[int | None] | None) -> int | None:
    if shape is None or len(shape) == 1:
        return 1 if shape is not None else None
    if len(shape) == 2:
        return shape[1]
    return None


def _signature(
    inputs: list[dict[str, Any]], outputs: list[dict[str, Any]], input_shape: tuple[int, ...] | None
) -> tuple[dict[str, Any], str]:
    signature: dict[str, Any] = {"inputs": inputs, "outputs": outputs}
    if len(inputs) == 1 and inputs[0]["shape"]:
        shape = inputs[0]["shape"]
        if len(shape) == 2 and isinstance(shape[1], int):
            signature["n_features"] = shape[1]
        if len(shape) >= 3:
            signature["input_shape"] = shape[1:]
    if input_shape is not None:
        signature["input_shape"] = list(input_shape)

    task_type = "classification"
    width = _output_width(outputs[0]["shape"]) if len(outputs) == 1 else None
    if width == 1:
        task_type = "regression"
    elif width is not None:
        signature["n_classes"] = width

    return signature, task_type


def inspect_torch(
    path: Path,
    fmt: str,
    preprocessing: Mapping[str, Any] | None = None,
    trusted: bool = False,
) -> ModelFileInfo:
    """Load a TorchScript or torch.export file on the CPU and read its signature.

    The format is taken from the file's content, so a .pt file containing a
    torch.export program is registered as ``torch_export``. A program saved with
    example inputs is run once on them, and a TorchScript module once on a zero
    sample when ``preprocessing`` gives ``input_shape``.

    Raises:
        InvalidModelFile: The file is not a model, contains only weights, or fails to run.
    """
    torch = _import_torch()
    settings = check_preprocessing(preprocessing)
    module, program, actual = _load(torch, path, torch.device("cpu"), trusted)

    if program is not None:
        inputs, outputs = _export_specs(program)
        _run_examples(torch, module, program)
    else:
        inputs, outputs = _script_specs(module)
        if settings.input_shape is not None:
            width = _probe(torch, module, settings.input_shape, torch.device("cpu"))
            outputs[0]["shape"] = [None, width] if width is not None else None
            inputs[0]["shape"] = [None, *settings.input_shape]

    signature, task_type = _signature(inputs, outputs, settings.input_shape)
    return ModelFileInfo(actual, "pytorch", task_type, signature)


def _run_examples(torch: Any, module: Any, program: Any) -> None:
    examples = program.example_inputs
    if not examples:
        return

    args, kwargs = examples
    try:
        with torch.inference_mode():
            module(*args, **kwargs)
    except Exception as exc:
        raise InvalidModelFile(
            f"the torch.export program fails on its own example inputs with this PyTorch "
            f"{torch.__version__}: {type(exc).__name__}: {exc}"
        ) from exc


def _probe(torch: Any, module: Any, input_shape: tuple[int, ...], device: Any) -> int | None:
    """Run one zero sample of ``input_shape``; return the output width if 2-D."""
    try:
        with torch.inference_mode():
            output = _first_tensor(module(torch.zeros((1, *input_shape), device=device)))
    except InvalidModelFile:
        raise
    except Exception as exc:
        raise InvalidModelFile(
            f"the model fails on an input of shape {[1, *input_shape]} taken from "
            f"preprocessing 'input_shape': {type(exc).__name__}: {exc}"
        ) from exc

    return int(output.shape[1]) if output.ndim == 2 else None


def _first_tensor(output: Any) -> Any:
    if isinstance(output, list | tuple) and output:
        output = output[0]
    if not hasattr(output, "ndim"):
        raise InvalidModelFile(
            f"the model returned a {type(output).__name__}; expected a tensor of shape "
            "(batch, classes) or (batch,)"
        )
    return output


# Inference


class TorchPredictor:
    """Runs a PyTorch model on feature tables or on uint8 image batches."""

    accepts_images = True

    def __init__(self, path: Path, model: dict[str, Any], threads: int) -> None:
        torch = _import_torch()
        self._torch = torch
        self.threads = threads
        self.device = _default_device(torch)
        self.preprocessing = check_preprocessing(model.get("preprocessing"))
        self.task_type = model.get("task_type", "classification")
        self.module, program, _ = _load(torch, path, self.device, bool(model.get("trusted")))

        self.input_dtype = torch.float32
        self.static_batch: int | None = None
        input_shape = self.preprocessing.input_shape
        if program is not None:
            inputs, _ = _export_specs(program)
            exported_shape = self._export_input(torch, inputs)
            input_shape = input_shape or exported_shape
        elif input_shape is not None:
            _probe(torch, self.module, input_shape, self.device)
        self.input_shape = input_shape

        width = input_shape[0] if input_shape is not None and len(input_shape) == 1 else None
        self.input_width = width

    def _export_input(self, torch: Any, inputs: list[dict[str, Any]]) -> tuple[int, ...] | None:
        """Record the program's input dtype and batch size; return its sample shape if static."""
        if len(inputs) != 1 or not inputs[0]["shape"]:
            return None

        dtype = getattr(torch, inputs[0]["dtype"], None)
        if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
            self.input_dtype = dtype

        batch, *sample = inputs[0]["shape"]
        self.static_batch = batch
        if any(d is None for d in sample):
            return None
        return tuple(sample)

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Return the predicted class (or value) per row and the top class probability.

        ``features`` is a (rows, features) table or a (N, H, W[, C]) image batch.
        """
        torch = self._torch
        # NOTE: torch's intra-op thread count is process-wide, so deployments with
        # different 'threads' running at the same time share the last one set.
        torch.set_num_threads(max(self.threads, 1))
        with torch.inference_mode():
            if features.ndim == 2:
                batch = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
                batch = batch.to(self.device, self.input_dtype)
            else:
                batch = self._image_batch(features)
            output = self._forward(batch)
            return self._decode(output)

    def _image_batch(self, images: np.ndarray) -> Any:
        torch = self._torch
        settings = self.preprocessing
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4:
            raise SchemaMismatch(
                f"expected images of shape (N, height, width, channels); got {images.shape}"
            )

        # A memory-mapped batch is read-only, and torch.from_numpy needs a writable array.
        writable = np.require(images, requirements=["C_CONTIGUOUS", "WRITEABLE"])
        batch = torch.from_numpy(writable).to(self.device)
        batch = batch.permute(0, 3, 1, 2).to(torch.float32)
        batch = self._match_channels(batch)
        if settings.bgr:
            batch = batch.flip(1)
        if settings.resize is not None and tuple(batch.shape[2:]) != settings.resize:
            batch = torch.nn.functional.interpolate(
                batch, size=settings.resize, mode="bilinear", align_corners=False, antialias=True
            )
        self._check_size(tuple(batch.shape[1:]))

        if settings.divisor is not None:
            batch = batch / settings.divisor
        if settings.mean is not None or settings.std is not None:
            batch = self._normalize(batch)
        if settings.layout == "hwc":
            batch = batch.permute(0, 2, 3, 1)

        return batch.contiguous().to(self.input_dtype)

    def _expected_chw(self) -> tuple[int, int, int] | None:
        shape = self.input_shape
        if shape is None or len(shape) != 3:
            return None
        if self.preprocessing.layout == "hwc":
            return shape[2], shape[0], shape[1]
        return shape[0], shape[1], shape[2]

    def _match_channels(self, batch: Any) -> Any:
        expected = self._expected_chw()
        channels = batch.shape[1]
        if expected is None or expected[0] == channels:
            return batch

        if expected[0] == 1 and channels == 3:
            weights = self._torch.tensor(_LUMA, device=batch.device).view(1, 3, 1, 1)
            return (batch * weights).sum(dim=1, keepdim=True)
        if expected[0] == 3 and channels == 1:
            return batch.expand(-1, 3, -1, -1)

        raise SchemaMismatch(
            f"the model expects {expected[0]} channels but the images have {channels}"
        )

    def _check_size(self, chw: tuple[int, ...]) -> None:
        expected = self._expected_chw()
        if expected is None or tuple(chw[1:]) == expected[1:]:
            return

        raise SchemaMismatch(
            f"the images are {chw[1]}x{chw[2]} (height x width) but the model expects "
            f"{expected[1]}x{expected[2]}; register the model with preprocessing "
            f"'resize': [{expected[1]}, {expected[2]}]"
        )

    def _normalize(self, batch: Any) -> Any:
        torch = self._torch
        channels = batch.shape[1]
        for key, values in (("mean", self.preprocessing.mean), ("std", self.preprocessing.std)):
            if values is not None and len(values) not in (1, channels):
                raise SchemaMismatch(
                    f"preprocessing {key!r} has {len(values)} values but the images have "
                    f"{channels} channels"
                )

        mean = torch.tensor(self.preprocessing.mean or (0.0,), device=batch.device)
        std = torch.tensor(self.preprocessing.std or (1.0,), device=batch.device)
        return (batch - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)

    def _forward(self, batch: Any) -> Any:
        size = self.static_batch
        if size is None or batch.shape[0] == size:
            return self._call(batch)

        # The program was exported with a fixed batch size: run it on slices of
        # that size, padding the last one with zeros and dropping their outputs.
        outputs = []
        for start in range(0, batch.shape[0], size):
            chunk = batch[start : start + size]
            missing = size - chunk.shape[0]
            if missing:
                padding = chunk.new_zeros((missing, *chunk.shape[1:]))
                chunk = self._torch.cat([chunk, padding])
            outputs.append(self._call(chunk)[: size - missing])

        return self._torch.cat(outputs)

    def _call(self, batch: Any) -> Any:
        try:
            output = self.module(batch)
        except Exception as exc:
            raise SchemaMismatch(
                f"the model failed on an input of shape {list(batch.shape)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

        return _first_tensor(output)

    def _decode(self, output: Any) -> tuple[np.ndarray, np.ndarray | None]:
        output = output.detach().float()
        single = output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)
        if self.task_type == "regression" or single:
            if not single:
                raise SchemaMismatch(
                    f"a regression model must return one value per row; got shape "
                    f"{list(output.shape)}"
                )
            return output.reshape(-1).cpu().numpy(), None

        if output.ndim != 2:
            raise SchemaMismatch(
                f"the model returned shape {list(output.shape)}; expected (batch, classes)"
            )

        probabilities = output
        if self.preprocessing.outputs == "logits":
            probabilities = self._torch.softmax(output, dim=1)
        top, classes = probabilities.max(dim=1)
        return classes.cpu().numpy().astype(np.int64), top.cpu().numpy()
