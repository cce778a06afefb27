"""PyTorch model files: TorchScript (.pt) and torch.export programs (.pt2)."""

from pathlib import Path
from typing import Any

import numpy as np

from mlhub_mcp.errors import InvalidModelFile
from mlhub_mcp.models._formats import ModelFileInfo


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise InvalidModelFile(
            "PyTorch models need the 'torch' extra: pip install 'mlhub-mcp[torch]'"
        ) from None
    return torch


def inspect_torch(path: Path, fmt: str) -> ModelFileInfo:
    _import_torch()
    raise InvalidModelFile(f"model format {fmt!r} is not supported yet")


class TorchPredictor:
    input_width: int | None = None

    def __init__(self, path: Path, model: dict[str, Any], threads: int) -> None:
        _import_torch()
        raise InvalidModelFile("PyTorch models cannot run yet")

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError
