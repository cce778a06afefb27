"""The execution server: deployments, executions, progress and results."""

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from mlhub_mcp.config import Settings
from mlhub_mcp.errors import NotFound
from mlhub_mcp.execution._groq_tools import register_llm_tools
from mlhub_mcp.execution._service import ExecutionService
from mlhub_mcp.platform import Platform
from mlhub_mcp.server_base import (
    DESTRUCTIVE,
    READ_ONLY,
    WRITE,
    PlatformServer,
    platform_lifespan,
    state_of,
)

Environment = Literal["production", "staging", "development"]
Engine = Literal["local", "spark", "groq"]
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]

RUN = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=True)


class DeploymentInfo(BaseModel):
    """A model version made ready to run."""

    id: str
    name: str
    model_name: str
    model_version: int
    model_kind: str
    task_type: str
    environment: str
    engine: str
    batch_size: int
    threads: int
    created_at: str


class DeploymentList(BaseModel):
    """A page of deployments."""

    deployments: list[DeploymentInfo]
    next_cursor: str | None = Field(description="pass as 'cursor' to get the next page")


class ExecutionInfo(BaseModel):
    """An execution of a deployment on a dataset, with its status and results."""

    id: str
    status: Status
    engine: str
    deployment_name: str
    model_name: str
    model_version: int
    task_type: str
    dataset_name: str
    parameters: dict[str, Any]
    rows_total: int
    rows_processed: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    duration_seconds: float | None
    rows_per_second: float | None = None
    error: str | None
    metrics: dict[str, Any] | None = Field(
        description="accuracy/precision/recall/F1 and confusion matrix, or MAE/MSE/RMSE/R²"
    )
    predictions_key: str | None
    predictions_url: str | None = Field(default=None, description="where the Parquet file is")
    plot_url: str | None = None
    spark_ui_url: str | None = None


class ExecutionList(BaseModel):
    """A page of executions, newest first."""

    executions: list[ExecutionInfo]
    next_cursor: str | None = Field(description="pass as 'cursor' to get the next page")


class PredictionRows(BaseModel):
    """Rows of an execution's predictions."""

    execution_id: str
    offset: int
    rows: list[dict[str, Any]]


class Deleted(BaseModel):
    """An entry removed by a delete."""

    name: str
    deleted: bool


class DeletedExecution(BaseModel):
    """An execution removed by a delete."""

    execution_id: str
    deleted: bool


def _service(ctx: Context) -> ExecutionService:
    return state_of(ctx)


async def _execution_info(service: ExecutionService, doc: dict[str, Any]) -> ExecutionInfo:
    info = ExecutionInfo.model_validate(doc)
    if doc.get("predictions_key"):
        info.predictions_url = await service.platform.artifacts.url(doc["predictions_key"])
    if doc.get("plot_key"):
        info.plot_url = await service.platform.artifacts.url(doc["plot_key"])
    return info


async def _result(
    service: ExecutionService, doc: dict[str, Any], include_plot: bool
) -> CallToolResult:
    info = await _execution_info(service, doc)
    structured = info.model_dump(mode="json")
    content: list[Any] = [TextContent(type="text", text=json.dumps(structured))]
    if include_plot and doc.get("plot_key"):
        path = await service.platform.artifacts.fetch(doc["plot_key"])
        data = base64.b64encode(await anyio.Path(path).read_bytes()).decode()
        content.append(ImageContent(type="image", data=data, mime_type="image/png"))

    return CallToolResult(content=content, structured_content=structured)


async def create_deployment(
    ctx: Context,
    name: Annotated[str, Field(description="Unique deployment name")],
    model_name: Annotated[str, Field(description="Registered model name")],
    model_version: Annotated[
        int | None, Field(ge=1, description="Model version; latest when omitted")
    ] = None,
    environment: Annotated[Environment, Field(description="Target environment")] = "staging",
    batch_size: Annotated[
        int,
        Field(
            ge=1,
            le=1_000_000,
            description=(
                "Default rows per batch of its executions; larger batches run tables faster, "
                "smaller ones bound memory for large images"
            ),
        ),
    ] = 1024,
    threads: Annotated[int, Field(ge=1, le=256, description="Inference threads")] = 1,
    engine: Annotated[
        Engine | None,
        Field(description="Default engine: local when omitted, groq for hosted LLMs"),
    ] = None,
) -> DeploymentInfo:
    """Deploy a model version: the model is checked, loaded and kept in memory."""
    doc = await _service(ctx).create_deployment(
        name=name,
        model_name=model_name,
        model_version=model_version,
        environment=environment,
        batch_size=batch_size,
        threads=threads,
        engine=engine,
    )
    return DeploymentInfo.model_validate(doc)


async def list_deployments(
    ctx: Context,
    environment: Annotated[Environment | None, Field(description="Only this environment")] = None,
    limit: Annotated[int, Field(ge=1, le=500, description="Page size")] = 50,
    cursor: Annotated[str | None, Field(description="next_cursor of the previous page")] = None,
) -> DeploymentList:
    """List deployments, oldest first."""
    page = await _service(ctx).list_deployments(environment=environment, limit=limit, cursor=cursor)
    items = [DeploymentInfo.model_validate(d) for d in page.items]
    return DeploymentList(deployments=items, next_cursor=page.next_cursor)


async def get_deployment(
    ctx: Context, name: Annotated[str, Field(description="Deployment name")]
) -> DeploymentInfo:
    """Describe a deployment."""
    return DeploymentInfo.model_validate(await _service(ctx).get_deployment(name))


async def delete_deployment(
    ctx: Context, name: Annotated[str, Field(description="Deployment name")]
) -> Deleted:
    """Delete a deployment; fails while one of its executions is queued or running."""
    await _service(ctx).delete_deployment(name)
    return Deleted(name=name, deleted=True)


async def run_execution(
    ctx: Context,
    deployment: Annotated[str, Field(description="Deployment name")],
    dataset: Annotated[str, Field(description="Dataset name")],
    batch_size: Annotated[
        int | None, Field(ge=1, le=1_000_000, description="Rows per batch; deployment's default")
    ] = None,
    feature_columns: Annotated[
        list[str] | None,
        Field(description="Columns fed to the model, in order; all but the label when omitted"),
    ] = None,
    label_column: Annotated[
        str | None, Field(description="Column with the true values; enables metrics")
    ] = None,
    wait: Annotated[
        bool,
        Field(description="true: run now and return the result; false: return the id at once"),
    ] = True,
    engine: Annotated[
        Engine | None, Field(description="Engine for this run; deployment's default")
    ] = None,
    prompt_template: Annotated[
        str | None, Field(description="LLM only: prompt with {column} placeholders")
    ] = None,
    system_prompt: Annotated[str | None, Field(description="LLM only: system message")] = None,
    temperature: Annotated[float | None, Field(ge=0, le=2, description="LLM only")] = None,
    max_tokens: Annotated[int | None, Field(ge=1, le=32768, description="LLM only")] = None,
) -> Annotated[CallToolResult, ExecutionInfo]:
    """Run a deployment over a dataset, batch by batch, and store the predictions.

    The model/dataset fit is checked before the run starts. With a label
    column, metrics are computed (and, for classifiers, a confusion-matrix
    image is returned). Progress notifications report rows done. With
    wait=false the execution id returns at once; poll get_execution.
    Cancelling a waiting call cancels the execution.
    """
    service = _service(ctx)
    llm = {
        key: value
        for key, value in (
            ("prompt_template", prompt_template),
            ("system_prompt", system_prompt),
            ("temperature", temperature),
            ("max_tokens", max_tokens),
        )
        if value is not None
    }
    doc = await service.prepare(
        deployment_name=deployment,
        dataset_name=dataset,
        batch_size=batch_size,
        feature_columns=feature_columns,
        label_column=label_column,
        engine=engine,
        llm=llm,
    )
    if not wait:
        service.start_in_background(doc["id"])
        return await _result(service, doc, include_plot=False)

    doc = await service.run(doc["id"], ctx.report_progress)
    return await _result(service, doc, include_plot=True)


async def get_execution(
    ctx: Context,
    execution_id: Annotated[str, Field(description="Execution id")],
    include_plot: Annotated[
        bool, Field(description="Attach the confusion-matrix image when there is one")
    ] = False,
) -> Annotated[CallToolResult, ExecutionInfo]:
    """Return an execution's status, timings, row counts, error and metrics."""
    service = _service(ctx)
    return await _result(service, await service.get_execution(execution_id), include_plot)


async def list_executions(
    ctx: Context,
    deployment: Annotated[str | None, Field(description="Only this deployment")] = None,
    status: Annotated[Status | None, Field(description="Only this status")] = None,
    limit: Annotated[int, Field(ge=1, le=500, description="Page size")] = 50,
    cursor: Annotated[str | None, Field(description="next_cursor of the previous page")] = None,
) -> ExecutionList:
    """List executions, newest first, without their confusion matrices (see get_execution)."""
    service = _service(ctx)
    page = await service.list_executions(
        deployment=deployment, status=status, limit=limit, cursor=cursor
    )
    items = [await _execution_info(service, _without_matrix(d)) for d in page.items]
    return ExecutionList(executions=items, next_cursor=page.next_cursor)


def _without_matrix(doc: dict[str, Any]) -> dict[str, Any]:
    """Drop the confusion matrix from a listed execution; get_execution returns it."""
    metrics = doc.get("metrics")
    if not metrics or "confusion_matrix" not in metrics:
        return doc
    trimmed = {k: v for k, v in metrics.items() if k != "confusion_matrix"}
    return {**doc, "metrics": trimmed}


async def cancel_execution(
    ctx: Context, execution_id: Annotated[str, Field(description="Execution id")]
) -> ExecutionInfo:
    """Cancel a queued or running execution; a finished one is returned unchanged."""
    service = _service(ctx)
    return await _execution_info(service, await service.cancel(execution_id))


async def get_predictions(
    ctx: Context,
    execution_id: Annotated[str, Field(description="Execution id")],
    rows: Annotated[int, Field(ge=1, le=1000, description="Number of rows")] = 20,
    offset: Annotated[int, Field(ge=0, description="First row")] = 0,
) -> PredictionRows:
    """Return rows of an execution's predictions: row, prediction, score, label."""
    data = await _service(ctx).predictions(execution_id, rows, offset)
    return PredictionRows(execution_id=execution_id, offset=offset, rows=data)


async def delete_execution(
    ctx: Context, execution_id: Annotated[str, Field(description="Execution id")]
) -> DeletedExecution:
    """Delete a finished execution and its stored predictions and plot."""
    await _service(ctx).delete_execution(execution_id)
    return DeletedExecution(execution_id=execution_id, deleted=True)


async def _resource_doc(ctx: Context, execution_id: str) -> dict[str, Any]:
    try:
        return await _service(ctx).get_execution(execution_id)
    except NotFound as exc:
        raise ResourceNotFoundError(str(exc)) from None


async def execution_resource(execution_id: str, ctx: Context) -> str:
    """Status, parameters and metrics of an execution, as JSON."""
    return json.dumps(await _resource_doc(ctx, execution_id), indent=2)


async def confusion_matrix_resource(execution_id: str, ctx: Context) -> bytes:
    """Read the confusion-matrix image of a classification execution (PNG)."""
    doc = await _resource_doc(ctx, execution_id)
    if not doc.get("plot_key"):
        raise ResourceNotFoundError(f"execution {execution_id} has no confusion matrix")
    path = await _service(ctx).platform.artifacts.fetch(doc["plot_key"])
    return await anyio.Path(path).read_bytes()


async def deployment_resource(name: str, ctx: Context) -> str:
    """Read a deployment as JSON."""
    try:
        return json.dumps(await _service(ctx).get_deployment(name), indent=2)
    except NotFound as exc:
        raise ResourceNotFoundError(str(exc)) from None


def evaluate_model_prompt(model: str, dataset: str, label_column: str) -> str:
    """Ask the assistant to deploy a model, run it on labelled data and report metrics."""
    return (
        f"Evaluate model {model!r} on dataset {dataset!r}. Check with get_dataset_schema "
        f"that column {label_column!r} exists, create a staging deployment with "
        f"create_deployment, run it with run_execution (label_column={label_column!r}), "
        "then report accuracy, macro F1 and the classes most often confused."
    )


def create_execution_server(settings: Settings | None = None) -> MCPServer:
    """Build the execution server; storage opens when it starts."""

    @asynccontextmanager
    async def setup(platform: Platform) -> AsyncIterator[ExecutionService]:
        async with anyio.create_task_group() as task_group:
            service = ExecutionService(platform, task_group)
            await service.recover()
            yield service
            task_group.cancel_scope.cancel()

    server = PlatformServer(
        "mlhub-execution",
        version="0.1.0",
        instructions="Deploy registered models and run them over datasets, with metrics.",
        lifespan=platform_lifespan(settings, setup),
        log_level="WARNING",
    )
    server.tool(title="Create deployment", annotations=WRITE)(create_deployment)
    server.tool(title="List deployments", annotations=READ_ONLY)(list_deployments)
    server.tool(title="Get deployment", annotations=READ_ONLY)(get_deployment)
    server.tool(title="Delete deployment", annotations=DESTRUCTIVE)(delete_deployment)
    server.tool(title="Run execution", annotations=RUN)(run_execution)
    server.tool(title="Get execution", annotations=READ_ONLY)(get_execution)
    server.tool(title="List executions", annotations=READ_ONLY)(list_executions)
    server.tool(title="Cancel execution", annotations=DESTRUCTIVE)(cancel_execution)
    server.tool(title="Get predictions", annotations=READ_ONLY)(get_predictions)
    server.tool(title="Delete execution", annotations=DESTRUCTIVE)(delete_execution)
    register_llm_tools(server)

    server.resource("executions://{execution_id}", mime_type="application/json")(execution_resource)
    server.resource("executions://{execution_id}/confusion-matrix", mime_type="image/png")(
        confusion_matrix_resource
    )
    server.resource("deployments://{name}", mime_type="application/json")(deployment_resource)
    server.prompt(name="evaluate_model")(evaluate_model_prompt)
    return server
