"""Gate checks: a model's fit to a dataset, the dataset's size, and a run's metric.

Each check returns a ``Check`` that names what was compared and the values,
so a failed gate names the check that failed and the values behind it.
"""

from typing import Any, Literal

from pydantic import BaseModel, Field

from mlhub_mcp.hub.workflows._scoring import comparison, meets, scalar_metrics, task_of_metric

CheckStatus = Literal["passed", "failed", "skipped"]


class Check(BaseModel):
    """The outcome of one gate check."""

    name: str = Field(description="e.g. 'n_features', 'max_rows', 'metric'")
    status: CheckStatus = Field(description="'skipped' when the check does not apply")
    detail: str = Field(description="what was compared, in words")
    values: dict[str, Any] = Field(default_factory=dict, description="the values compared")


def _check(name: str, ok: bool, detail: str, **values: Any) -> Check:
    return Check(name=name, status="passed" if ok else "failed", detail=detail, values=values)


def _skip(name: str, detail: str, **values: Any) -> Check:
    return Check(name=name, status="skipped", detail=detail, values=values)


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == "failed"]


def failure_text(checks: list[Check]) -> str:
    """Return one line naming each failed check and its reason."""
    return "; ".join(f"{c.name}: {c.detail}" for c in failed(checks))


def is_numeric(type_name: str) -> bool:
    """Return whether a dataset column of this Arrow type can feed a model."""
    return type_name.startswith(("int", "uint", "float", "double", "bool", "decimal", "halffloat"))


def select_features(
    signature: dict[str, Any],
    column_names: list[str],
    requested: list[str] | None,
    label_column: str | None,
) -> list[str]:
    """Return the feature columns a run would use, as the execution server picks them.

    The order of preference is the requested columns, then the feature names in
    the model's signature, then every dataset column except the label.
    """
    if requested:
        return list(requested)
    if signature.get("feature_names"):
        return [str(name) for name in signature["feature_names"]]
    return [name for name in column_names if name != label_column]


def compatibility_checks(
    model: dict[str, Any],
    dataset: dict[str, Any],
    label_column: str | None,
    feature_columns: list[str] | None,
) -> list[Check]:
    """Check that a model version can run on a dataset.

    ``model`` and ``dataset`` are the results of get_model and get_dataset. The
    checks are: the label column exists, the feature columns exist and are
    numeric, and the model's ``n_features`` equals the number of feature columns.
    """
    model_ref = f"model {model['name']!r} v{model['version']}"
    dataset_name = dataset["name"]
    if dataset.get("kind", "table") != "table":
        return [_skip("compatibility", f"dataset {dataset_name!r} contains images, not a table")]

    columns = {c["name"]: c["type"] for c in dataset.get("columns", [])}
    checks: list[Check] = []
    if label_column is not None:
        checks.append(
            _check(
                "label_column",
                label_column in columns,
                f"column {label_column!r} "
                + ("is" if label_column in columns else "is not")
                + f" in dataset {dataset_name!r}",
                label_column=label_column,
                dataset_columns=len(columns),
            )
        )

    if model.get("kind") == "llm":
        checks.append(
            _skip(
                "n_features",
                f"{model_ref} is a hosted LLM; run_execution checks its prompt template instead",
            )
        )
        return checks

    signature = model.get("signature") or {}
    features = select_features(signature, list(columns), feature_columns, label_column)
    missing = [c for c in features if c not in columns]
    not_numeric = [
        f"{c} ({columns[c]})" for c in features if c in columns and not is_numeric(columns[c])
    ]
    checks.append(
        _check(
            "feature_columns",
            not missing and not not_numeric and label_column not in features,
            _feature_detail(dataset_name, missing, not_numeric, label_column, features),
            selected=len(features),
            missing=missing,
            not_numeric=not_numeric,
        )
    )

    width = signature.get("n_features")
    if isinstance(width, int):
        checks.append(
            _check(
                "n_features",
                width == len(features),
                f"{model_ref} expects {width} features and dataset {dataset_name!r} has "
                f"{len(features)} feature columns"
                + ("" if label_column is None else f" besides label {label_column!r}"),
                model_n_features=width,
                dataset_feature_columns=len(features),
                dataset_columns=len(columns),
            )
        )
    else:
        checks.append(
            _skip("n_features", f"{model_ref} declares no feature count in its signature")
        )

    return checks


def _feature_detail(
    dataset: str,
    missing: list[str],
    not_numeric: list[str],
    label_column: str | None,
    features: list[str],
) -> str:
    problems = []
    if missing:
        problems.append(f"dataset {dataset!r} lacks columns {missing[:10]}")
    if not_numeric:
        problems.append(f"columns {not_numeric[:10]} are not numeric")
    if label_column is not None and label_column in features:
        problems.append(f"label column {label_column!r} is also a feature")
    if problems:
        return "; ".join(problems)
    return f"{len(features)} numeric feature columns found in dataset {dataset!r}"


def size_checks(
    dataset: dict[str, Any],
    max_rows: int | None,
    min_rows: int | None,
    max_size_bytes: int | None,
) -> list[Check]:
    """Check the dataset's row count and stored size against the limits that are set."""
    name = dataset["name"]
    rows = int(dataset["row_count"])
    size = int(dataset["size_bytes"])
    checks = []
    if max_rows is not None:
        checks.append(
            _check(
                "max_rows",
                rows <= max_rows,
                f"dataset {name!r} has {rows} rows; the limit is {max_rows}",
                row_count=rows,
                max_rows=max_rows,
            )
        )
    if min_rows is not None:
        checks.append(
            _check(
                "min_rows",
                rows >= min_rows,
                f"dataset {name!r} has {rows} rows; at least {min_rows} are required",
                row_count=rows,
                min_rows=min_rows,
            )
        )
    if max_size_bytes is not None:
        checks.append(
            _check(
                "max_size_bytes",
                size <= max_size_bytes,
                f"dataset {name!r} takes {size} bytes stored; the limit is {max_size_bytes}",
                size_bytes=size,
                max_size_bytes=max_size_bytes,
            )
        )
    return checks


def metric_check(metrics: dict[str, Any] | None, metric: str, threshold: float) -> Check:
    """Check that an execution's ``metric`` reaches ``threshold``."""
    values = scalar_metrics(metrics)
    if metric not in values:
        return _check(
            "metric",
            False,
            f"the execution reported no {metric!r}; it reported {sorted(values)}",
            metric=metric,
            threshold=threshold,
        )
    value = values[metric]
    operator = comparison(metric)
    ok = meets(value, threshold, metric)
    verdict = "meets" if ok else "does not meet"
    return _check(
        "metric",
        ok,
        f"{metric} = {value:.4f} {verdict} the threshold {operator} {threshold}",
        metric=metric,
        value=value,
        threshold=threshold,
    )


def task_check(model: dict[str, Any], metric: str) -> Check:
    """Check that the model's task type reports ``metric``."""
    expected = task_of_metric(metric)
    task = model.get("task_type")
    return _check(
        "task_type",
        task == expected,
        f"metric {metric!r} needs a {expected} model; model {model['name']!r} is {task}",
        task_type=task,
        metric=metric,
    )
