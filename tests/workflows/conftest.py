"""One hub with the workflow tools for the whole directory, on real digits models.

The hub runs in this process with ``create_hub_server`` and starts the model,
data and execution servers as stdio subprocesses on a fresh data directory.
Three classifiers trained on scikit-learn's digits (logistic regression,
random forest, decision tree) and a binary "is it a 9?" classifier are
exported to ONNX, registered and deployed once. The execution server reaches
a local stub of the Groq API, so LLM runs never leave 127.0.0.1.
"""

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mcp import Client
from mcp.types import CallToolResult

from mlhub_mcp.config import Settings, load_settings
from mlhub_mcp.hub.server import create_hub_server
from mlhub_mcp.hub.workflows import workflow_prompts, workflow_tools
from tests.groq_stub import Answer, Call, GroqStub

GROQ_KEY = "gsk_workflow_stub_key"
LLM_PROVIDER_MODEL = "llama-3.1-8b-instant"

CLASSIFIERS = {"logreg": "digits-logreg", "forest": "digits-forest", "tree": "digits-tree"}
DEPLOYMENTS = {"logreg": "logreg-staging", "forest": "forest-staging", "tree": "tree-staging"}
BINARY_MODEL = "digits-nine"
BINARY_DEPLOYMENT = "nine-staging"
LLM_MODEL = "sentiment-llm"
LLM_DEPLOYMENT = "sentiment-staging"
HOLDOUT = "digits-holdout"
BINARY_HOLDOUT = "digits-nine-holdout"
NARROW = "digits-narrow"
REVIEWS = "reviews"
HOLDOUT_ROWS = 540

REVIEW_ROWS = [
    ("I love this phone", "positive"),
    ("great battery life", "positive"),
    ("terrible screen", "negative"),
    ("broke after a day", "negative"),
    ("works fine, love it", "positive"),
    ("the worst purchase this year", "negative"),
]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Platform:
    """The hub client and the files behind the registered entries."""

    client: Client
    settings: Settings
    files: Path
    stub: GroqStub


def text_of(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Call a tool that must succeed and return its structured result."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    return result.structured_content


async def call_failing(client: Client, tool: str, arguments: dict[str, Any]) -> CallToolResult:
    """Call a tool that must fail and return its result."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, f"{tool} succeeded: {text_of(result)[:500]}"
    return result


def _write_files(folder: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.tree import DecisionTreeClassifier
    from threadpoolctl import threadpool_limits

    features, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        features.astype(np.float32), labels, test_size=0.3, random_state=0, stratify=labels
    )
    models = {
        "logreg": LogisticRegression(max_iter=3000),
        "forest": RandomForestClassifier(n_estimators=30, random_state=0),
        "tree": DecisionTreeClassifier(max_depth=6, random_state=0),
    }
    # One BLAS thread: on a small machine lbfgs runs many times slower with
    # several threads competing for the cores.
    with threadpool_limits(1):
        for model in models.values():
            model.fit(x_train, y_train)
        nine = LogisticRegression(max_iter=3000).fit(x_train, (y_train == 9).astype(np.int64))

    for key, model in models.items():
        onnx = to_onnx(model, x_train[:1].astype(np.float32), options={"zipmap": False})
        (folder / f"{key}.onnx").write_bytes(onnx.SerializeToString())
    onnx = to_onnx(nine, x_train[:1].astype(np.float32), options={"zipmap": False})
    (folder / "nine.onnx").write_bytes(onnx.SerializeToString())

    pixels: dict[str, Any] = {f"pixel_{i}": x_test[:, i] for i in range(64)}
    pa_csv.write_csv(pa.table({**pixels, "label": y_test.astype(np.int64)}), folder / "holdout.csv")
    binary = (y_test == 9).astype(np.int64)
    pa_csv.write_csv(pa.table({**pixels, "label": binary}), folder / "nine.csv")
    narrow = {f"pixel_{i}": x_test[:, i] for i in range(10)}
    pa_csv.write_csv(pa.table({**narrow, "label": y_test.astype(np.int64)}), folder / "narrow.csv")

    texts, review_labels = zip(*REVIEW_ROWS, strict=True)
    pa_csv.write_csv(pa.table({"text": texts, "label": review_labels}), folder / "reviews.csv")


def label_reviews(call: Call) -> Answer:
    """Answer like an LLM that follows the label set only when the prompt states it."""
    for text, label in REVIEW_ROWS:
        if text in call.prompt.rsplit("Now answer this one:", 1)[-1]:
            if "Answer with exactly one of" in call.prompt:
                return Answer(label)
            return Answer(f"I would say this review is {label}.")
    return Answer("unknown")


@pytest.fixture(scope="session")
def groq_stub() -> Iterator[GroqStub]:
    with GroqStub(GROQ_KEY, label_reviews) as stub:
        yield stub


@pytest.fixture(scope="session")
def hub_settings(tmp_path_factory: pytest.TempPathFactory, groq_stub: GroqStub) -> Settings:
    """Settings on a fresh data directory; the execution server reaches the Groq stub."""
    root = tmp_path_factory.mktemp("workflows")
    files = root / "imports"
    files.mkdir()
    _write_files(files)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLHUB_HOME", str(root / "home"))
        patch.setenv("MLHUB_IMPORT_DIRS", str(files))
        for name in ("MLHUB_CONFIG", "MLHUB_CATALOG", "MLHUB_ARTIFACTS"):
            patch.delenv(name, raising=False)
        patch.chdir(root)
        settings = load_settings()

    settings.servers["execution"].env.update(
        {
            "GROQ_API_KEY": GROQ_KEY,
            "GROQ_BASE_URL": groq_stub.url,
            "MLHUB_GROQ_MAX_BACKOFF": "0.05",
            "MLHUB_GROQ_TIMEOUT": "5",
        }
    )
    return settings


async def _register_everything(client: Client, files: Path) -> None:
    for key, name in CLASSIFIERS.items():
        await call(client, "register_model", {"name": name, "path": str(files / f"{key}.onnx")})
        await call(client, "create_deployment", {"name": DEPLOYMENTS[key], "model_name": name})
    await call(client, "register_model", {"name": BINARY_MODEL, "path": str(files / "nine.onnx")})
    await call(client, "create_deployment", {"name": BINARY_DEPLOYMENT, "model_name": BINARY_MODEL})

    for name, file in (
        (HOLDOUT, "holdout.csv"),
        (BINARY_HOLDOUT, "nine.csv"),
        (NARROW, "narrow.csv"),
    ):
        await call(client, "register_dataset", {"name": name, "path": str(files / file)})
    await call(client, "register_dataset", {"name": REVIEWS, "path": str(files / "reviews.csv")})

    await call(client, "register_llm", {"name": LLM_MODEL, "provider_model": LLM_PROVIDER_MODEL})
    await call(client, "create_deployment", {"name": LLM_DEPLOYMENT, "model_name": LLM_MODEL})


@pytest.fixture(scope="session")
async def platform(hub_settings: Settings, groq_stub: GroqStub) -> AsyncIterator[Platform]:
    server = create_hub_server(
        hub_settings, local_tools=workflow_tools(), local_prompts=workflow_prompts()
    )
    files = hub_settings.import_dirs[0]
    async with Client(server, read_timeout_seconds=120) as client:
        await _register_everything(client, files)
        yield Platform(client, hub_settings, files, groq_stub)


@pytest.fixture
def client(platform: Platform) -> Client:
    return platform.client
