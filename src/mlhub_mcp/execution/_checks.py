"""Checks of an execution's dataset against its model, made before the run starts."""

from typing import Any

from mlhub_mcp.errors import SchemaMismatch


def format_names(names: list[str], shown: int = 10) -> str:
    """Format a list of column names for a message, shortening long lists."""
    if len(names) <= shown:
        return str(names)
    return f"{names[:shown]} and {len(names) - shown} more"


def _null_counts(dataset: dict[str, Any]) -> dict[str, int]:
    return {c["name"]: int(c.get("null_count") or 0) for c in dataset.get("columns", [])}


def _is_numeric(type_name: str) -> bool:
    return type_name.startswith(("int", "uint", "float", "double", "bool", "decimal", "halffloat"))


def check_label(
    model: dict[str, Any],
    dataset: dict[str, Any],
    columns: dict[str, str],
    label_column: str,
) -> None:
    nulls = _null_counts(dataset).get(label_column, 0)
    if nulls:
        raise SchemaMismatch(
            f"label column {label_column!r} of dataset {dataset['name']!r} has {nulls} "
            "null values; remove those rows or choose another label column"
        )
    if model["task_type"] == "regression" and not _is_numeric(columns[label_column]):
        raise SchemaMismatch(
            f"model {model['name']!r} is a regression model but label column "
            f"{label_column!r} is {columns[label_column]}; a regression label must be numeric"
        )


def select_features(
    model: dict[str, Any],
    dataset: dict[str, Any],
    columns: dict[str, str],
    requested: list[str] | None,
    label_column: str | None,
) -> list[str]:
    signature = model.get("signature") or {}
    if requested is not None:
        features = list(requested)
    elif signature.get("feature_names"):
        features = list(signature["feature_names"])
    else:
        features = [name for name in columns if name != label_column]

    missing = [c for c in features if c not in columns]
    if missing:
        raise SchemaMismatch(
            f"dataset {dataset['name']!r} lacks feature columns {format_names(missing)}; "
            f"its columns: {format_names(list(columns))}"
        )
    if label_column in features:
        raise SchemaMismatch(f"label column {label_column!r} is also listed as a feature")

    not_numeric = [f"{c} ({columns[c]})" for c in features if not _is_numeric(columns[c])]
    if not_numeric:
        raise SchemaMismatch(
            f"feature columns must be numeric; these are not: {not_numeric}. "
            "Pass 'feature_columns' without them"
        )

    nulls = _null_counts(dataset)
    with_nulls = [f"{c} ({nulls[c]} nulls)" for c in features if nulls.get(c)]
    if with_nulls:
        raise SchemaMismatch(
            f"feature columns contain null values, which the model would see as NaN: "
            f"{format_names(with_nulls)}. Fill or drop those rows, or leave the columns out "
            "with 'feature_columns'"
        )

    width = signature.get("n_features")
    if isinstance(width, int) and width != len(features):
        raise SchemaMismatch(
            f"model {model['name']!r} expects {width} features but {len(features)} columns "
            f"were selected: {format_names(features)}. "
            "Pass 'feature_columns' (and 'label_column') to choose them"
        )

    return features
