"""The model server: register, version, describe, list and delete models."""

import json
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from pydantic import BaseModel, Field

from mlhub_mcp.config import Settings
from mlhub_mcp.errors import NotFound
from mlhub_mcp.models._registry import ModelRegistry
from mlhub_mcp.server_base import (
    DESTRUCTIVE,
    READ_ONLY,
    WRITE,
    PlatformServer,
    platform_lifespan,
    state_of,
)

TaskType = Literal["classification", "regression", "text-generation", "other"]
ModelFormat = Literal["onnx", "pickle", "joblib", "torchscript", "torch_export"]


class ModelInfo(BaseModel):
    """One version of a registered model."""

    id: str
    name: str
    version: int
    kind: str = Field(description="'file' for a model file, 'llm' for a hosted LLM")
    description: str
    task_type: str
    framework: str
    format: str
    file_name: str | None
    size_bytes: int
    sha256: str | None
    signature: dict[str, Any] = Field(description="inputs and outputs read from the file")
    trusted: bool
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    provider: str | None = None
    provider_model: str | None = None
    created_at: str


class ModelList(BaseModel):
    """A page of models."""

    models: list[ModelInfo]
    next_cursor: str | None = Field(description="pass as 'cursor' to get the next page")


class SweepResult(BaseModel):
    """Stored files that no catalog entry refers to."""

    removed: bool = Field(description="true when the files were deleted")
    keys: list[str] = Field(description="artifact keys of the orphan files")


class DeletedModels(BaseModel):
    """Versions removed by a delete."""

    name: str
    deleted_versions: list[int]


def _info(doc: dict[str, Any]) -> ModelInfo:
    return ModelInfo.model_validate(doc)


def _registry(ctx: Context) -> ModelRegistry:
    return state_of(ctx)


async def register_model(
    ctx: Context,
    name: Annotated[
        str, Field(description="Model name; registering an existing name adds a version")
    ],
    path: Annotated[
        str | None,
        Field(description="Path of the model file on the server host, inside an import directory"),
    ] = None,
    content_base64: Annotated[
        str | None, Field(description="The file's bytes in base64, for small files instead of path")
    ] = None,
    file_name: Annotated[
        str | None, Field(description="File name for content_base64, e.g. 'model.onnx'")
    ] = None,
    description: Annotated[str, Field(description="Free text shown in listings")] = "",
    task_type: Annotated[
        TaskType | None, Field(description="Task; read from the file when omitted")
    ] = None,
    format: Annotated[
        ModelFormat | None, Field(description="File format; taken from the suffix when omitted")
    ] = None,
    trusted: Annotated[
        bool,
        Field(description="Allow loading a pickle/joblib file, which runs code from the file"),
    ] = False,
    preprocessing: Annotated[
        dict[str, Any] | None,
        Field(description="Input preprocessing for image models (resize, scale, mean, std)"),
    ] = None,
) -> ModelInfo:
    """Register a model file (ONNX, scikit-learn pickle/joblib, PyTorch) as a new version.

    Give either 'path' (a file inside an import directory) or 'content_base64'
    with 'file_name'. The file is checked and its input/output signature read
    before anything is stored; a damaged file changes nothing.
    """
    doc = await _registry(ctx).register_file(
        name=name,
        path=path,
        content_base64=content_base64,
        file_name=file_name,
        description=description,
        task_type=task_type,
        model_format=format,
        trusted=trusted,
        preprocessing=preprocessing,
    )
    return _info(doc)


async def register_llm(
    ctx: Context,
    name: Annotated[str, Field(description="Model name in the registry")],
    provider_model: Annotated[
        str, Field(description="The provider's model id, e.g. 'llama-3.3-70b-versatile'")
    ],
    provider: Annotated[Literal["groq"], Field(description="Hosting provider")] = "groq",
    description: Annotated[str, Field(description="Free text shown in listings")] = "",
) -> ModelInfo:
    """Register a hosted LLM (no file) as a new version of a model.

    Registering needs no API key; running a deployment of it does.
    """
    doc = await _registry(ctx).register_llm(
        name=name, provider=provider, provider_model=provider_model, description=description
    )
    return _info(doc)


async def list_models(
    ctx: Context,
    name: Annotated[str | None, Field(description="Only versions of this model")] = None,
    task_type: Annotated[TaskType | None, Field(description="Only this task type")] = None,
    framework: Annotated[
        str | None, Field(description="Only this framework: onnx, scikit-learn, pytorch, groq")
    ] = None,
    limit: Annotated[int, Field(ge=1, le=500, description="Page size")] = 50,
    cursor: Annotated[str | None, Field(description="next_cursor of the previous page")] = None,
) -> ModelList:
    """List registered model versions, oldest first, one page at a time."""
    page = await _registry(ctx).list_page(
        name=name, task_type=task_type, framework=framework, limit=limit, cursor=cursor
    )
    return ModelList(models=[_info(d) for d in page.items], next_cursor=page.next_cursor)


async def get_model(
    ctx: Context,
    name: Annotated[str, Field(description="Model name")],
    version: Annotated[int | None, Field(ge=1, description="Version; latest when omitted")] = None,
) -> ModelInfo:
    """Describe one version of a model: format, size, sha256 and signature."""
    return _info(await _registry(ctx).get(name, version))


async def list_model_versions(
    ctx: Context, name: Annotated[str, Field(description="Model name")]
) -> ModelList:
    """List every version of one model, oldest first."""
    docs = await _registry(ctx).versions(name)
    return ModelList(models=[_info(d) for d in docs], next_cursor=None)


async def delete_model(
    ctx: Context,
    name: Annotated[str, Field(description="Model name")],
    version: Annotated[
        int | None, Field(ge=1, description="Version to delete; every version when omitted")
    ] = None,
) -> DeletedModels:
    """Delete a model version, or all versions, and their stored files.

    Fails when a deployment still uses a version to delete.
    """
    docs = await _registry(ctx).delete(name, version)
    return DeletedModels(name=name, deleted_versions=[d["version"] for d in docs])


async def sweep_artifacts(
    ctx: Context,
    remove: Annotated[
        bool, Field(description="Delete the orphan files; false only lists them")
    ] = False,
) -> SweepResult:
    """Find stored files (models, datasets, predictions, plots) that no catalog entry uses.

    Such orphans are left when a process dies between storing a file and
    recording it. Listing is safe at any time; remove while no registration
    is running, since a file being registered looks orphaned for a moment.
    """
    from mlhub_mcp.sweep import sweep_orphans

    keys = await sweep_orphans(_registry(ctx).platform, remove)
    return SweepResult(removed=remove, keys=keys)


def _model_card(doc: dict[str, Any]) -> str:
    lines = [
        f"# {doc['name']} (version {doc['version']})",
        "",
        doc.get("description") or "No description.",
        "",
        f"- Task: {doc['task_type']}",
        f"- Framework: {doc['framework']}, format {doc['format']}",
    ]
    if doc.get("kind") == "llm":
        lines.append(f"- Hosted by {doc['provider']} as `{doc['provider_model']}`")
    else:
        lines.append(f"- File: {doc['file_name']} ({doc['size_bytes']} bytes)")
        lines.append(f"- sha256: `{doc['sha256']}`")
        lines.append(f"- Trusted pickle: {'yes' if doc.get('trusted') else 'no'}")
    lines.append(f"- Registered: {doc['created_at']}")

    signature = doc.get("signature") or {}
    for direction in ("inputs", "outputs"):
        label = direction[:-1].title()
        for item in signature.get(direction, []):
            shape = item.get("shape", "")
            lines.append(f"- {label} `{item['name']}`: {item['dtype']} {shape}")
    if "n_features" in signature:
        lines.append(f"- Features: {signature['n_features']}")

    return "\n".join(lines) + "\n"


async def _resource_doc(ctx: Context, name: str, version: str | None = None) -> dict[str, Any]:
    try:
        number = int(version) if version is not None else None
    except ValueError:
        raise ResourceNotFoundError(f"invalid model version {version!r}") from None
    try:
        return await _registry(ctx).get(name, number)
    except NotFound as exc:
        raise ResourceNotFoundError(str(exc)) from None


async def model_metadata(name: str, ctx: Context) -> str:
    """Metadata of the latest version of a model, as JSON."""
    return json.dumps(await _resource_doc(ctx, name), indent=2)


async def model_version_metadata(name: str, version: str, ctx: Context) -> str:
    """Metadata of one version of a model, as JSON."""
    return json.dumps(await _resource_doc(ctx, name, version), indent=2)


async def model_card(name: str, ctx: Context) -> str:
    """A readable card for the latest version of a model."""
    return _model_card(await _resource_doc(ctx, name))


def describe_model_prompt(name: str) -> str:
    """Ask the assistant to explain a registered model and how to run it."""
    return (
        f"Read the resource models://{name}/card and explain model {name!r} to me: what it "
        "predicts, which inputs it expects, and how to deploy it with create_deployment and "
        "run it on a dataset with run_execution."
    )


def create_model_server(settings: Settings | None = None) -> MCPServer:
    """Build the model server; storage opens when it starts."""

    @asynccontextmanager
    async def setup(platform: Any) -> Any:
        yield ModelRegistry(platform)

    server = PlatformServer(
        "mlhub-model",
        version="0.1.0",
        instructions="Registry of ML model files and hosted LLMs, with versions.",
        lifespan=platform_lifespan(settings, setup),
        log_level="WARNING",
    )
    server.tool(title="Register model", annotations=WRITE)(register_model)
    server.tool(title="Register hosted LLM", annotations=WRITE)(register_llm)
    server.tool(title="List models", annotations=READ_ONLY)(list_models)
    server.tool(title="Get model", annotations=READ_ONLY)(get_model)
    server.tool(title="List model versions", annotations=READ_ONLY)(list_model_versions)
    server.tool(title="Delete model", annotations=DESTRUCTIVE)(delete_model)
    server.tool(title="Sweep orphan files", annotations=DESTRUCTIVE)(sweep_artifacts)

    server.resource("models://{name}", mime_type="application/json")(model_metadata)
    server.resource("models://{name}/versions/{version}", mime_type="application/json")(
        model_version_metadata
    )
    server.resource("models://{name}/card", mime_type="text/markdown")(model_card)
    server.prompt(name="describe_model")(describe_model_prompt)
    return server
