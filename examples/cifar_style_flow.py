"""An image classifier through the model, data and execution servers.

The flow is the one a CIFAR-10 model would take: 32x32 RGB images in one
folder per class, a small CNN exported to TorchScript with its preprocessing,
and a run that reports accuracy. To need no download, the images are
scikit-learn's 8x8 digits enlarged to 32x32 and copied to three channels.

Needs the torch extra and Pillow:

    pip install 'mlhub-mcp[torch]' pillow
    python examples/cifar_style_flow.py [--home DIR]

Without --home, a new temporary data directory is used and removed at the end.
The servers run in this process, connected through in-memory MCP clients.
"""

import argparse
import io
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from mlhub_mcp.config import HOME_ENV, IMPORT_DIRS_ENV, load_settings

EPOCHS = 3


def enlarge(digits: np.ndarray) -> np.ndarray:
    """Turn 8x8 digits with values 0..16 into 32x32x3 uint8 images."""
    pixels = np.rint(digits / 16 * 255).astype(np.uint8)
    large = pixels.repeat(4, axis=1).repeat(4, axis=2)
    return np.repeat(large[..., np.newaxis], 3, axis=3)


def train_cnn(images: np.ndarray, labels: np.ndarray, mean: float, std: float) -> Any:
    """Train a two-layer CNN on uint8 images normalised with ``mean`` and ``std``."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 10),
    )
    inputs = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    targets = torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(EPOCHS):
        order = torch.randperm(len(inputs))
        for start in range(0, len(inputs), 32):
            batch = order[start : start + 32]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs[batch]), targets[batch])
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}/{EPOCHS}: last batch loss {loss.item():.3f}")

    return model.eval()


def write_image_folder(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write a zip archive with one folder per class, as torchvision's ImageFolder reads."""
    from PIL import Image

    with zipfile.ZipFile(path, "w") as archive:
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            archive.writestr(f"holdout/{label}/{index:04d}.png", buffer.getvalue())


def prepare_files(folder: Path) -> dict[str, Any]:
    """Train and export the CNN, and write the held-out split as an archive."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        enlarge(digits.images), digits.target, test_size=0.3, random_state=0, stratify=digits.target
    )
    mean = float(x_train.mean() / 255)
    std = float(x_train.std() / 255)
    model = train_cnn(x_train, y_train, mean, std)

    model_path = folder / "digits-cnn.pt"
    torch.jit.script(model).save(str(model_path))
    archive_path = folder / "digits-holdout.zip"
    write_image_folder(archive_path, x_test, y_test)
    preprocessing = {"scale": True, "mean": [mean] * 3, "std": [std] * 3}
    return {"model": model_path, "archive": archive_path, "preprocessing": preprocessing}


def check(result: Any, step: str) -> dict[str, Any]:
    if result.is_error:
        text = " ".join(getattr(c, "text", "") for c in result.content)
        raise RuntimeError(f"{step} failed: {text}")
    return result.structured_content or {}


async def run_flow(files: dict[str, Any]) -> dict[str, Any]:
    """Register, preview, deploy and run the model; return the execution."""
    from mcp import Client

    from mlhub_mcp.datasets._image_tools import register_image_tools
    from mlhub_mcp.datasets.server import create_data_server
    from mlhub_mcp.execution.server import create_execution_server
    from mlhub_mcp.models.server import create_model_server

    settings = load_settings()
    async with Client(create_execution_server(settings)) as execution:
        # A rerun on the same --home replaces the deployment and the dataset;
        # the model gains a version. Both deletes fail harmlessly on a first run.
        await execution.call_tool("delete_deployment", {"name": "digits-cnn-staging"})
    async with Client(create_data_server(settings)) as data:
        await data.call_tool("delete_dataset", {"name": "digits-holdout"})

    async with Client(create_model_server(settings)) as models:
        arguments = {
            "name": "digits-cnn",
            "path": str(files["model"]),
            "preprocessing": files["preprocessing"],
            # TorchScript files can run code when loaded; this one was just
            # written by this script, so it is trusted.
            "trusted": True,
        }
        model = check(await models.call_tool("register_model", arguments), "register_model")
        print(f"registered model {model['name']} v{model['version']} ({model['format']})")

    data_server = create_data_server(settings)
    if not any(tool.name == "preview_images" for tool in await data_server.list_tools()):
        register_image_tools(data_server)
    async with Client(data_server) as data:
        arguments = {"name": "digits-holdout", "path": str(files["archive"])}
        dataset = check(await data.call_tool("register_dataset", arguments), "register_dataset")
        info = dataset["image_info"]
        print(
            f"registered dataset {dataset['name']}: {dataset['row_count']} images of "
            f"{info['width']}x{info['height']}x{info['channels']}, classes {info['classes']}"
        )
        preview = await data.call_tool("preview_images", {"name": "digits-holdout", "count": 4})
        pictures = [c for c in preview.content if c.type == "image"]
        print(f"preview_images returned {len(pictures)} PNG thumbnails")

    async with Client(create_execution_server(settings)) as execution:
        arguments = {"name": "digits-cnn-staging", "model_name": "digits-cnn"}
        check(await execution.call_tool("create_deployment", arguments), "create_deployment")
        arguments = {
            "deployment": "digits-cnn-staging",
            "dataset": "digits-holdout",
            "label_column": "label",
        }
        result = await execution.call_tool("run_execution", arguments)
        return check(result, "run_execution")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="data directory; a temporary one by default")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mlhub-images-") as scratch:
        home = args.home or Path(scratch) / "home"
        files_dir = Path(scratch) / "files"
        files_dir.mkdir()
        os.environ[HOME_ENV] = str(home)
        os.environ[IMPORT_DIRS_ENV] = str(files_dir)

        started = time.perf_counter()
        files = prepare_files(files_dir)
        execution = anyio.run(run_flow, files)

    metrics = execution["metrics"]
    print(
        f"execution {execution['status']}: {execution['rows_processed']} images in "
        f"{execution['duration_seconds']} s, accuracy {metrics['accuracy']:.3f}, "
        f"macro F1 {metrics['f1_macro']:.3f}"
    )
    print(f"flow finished in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
