"""Batch prediction with an MLflow pyfunc model over a Parquet file, timed.

bench_execution.py runs this with the Python of a separate virtual
environment that has mlflow-skinny, onnx, onnxruntime, pandas and pyarrow,
because MLflow pins versions of its own:

    MLFLOW_PYTHON benchmarks/_mlflow_batch.py MODEL.onnx DATA.parquet BATCH_SIZE FEATURE...

The ONNX file is saved as an MLflow model first (not timed). The timed part
loads it with ``mlflow.pyfunc.load_model``, reads the Parquet file batch by
batch into a NumPy matrix, predicts each batch with ``predict``, and writes
the predicted label and the top-class probability to Parquet. A pandas
DataFrame input does not work for a classifier: MLflow's ONNX flavour
flattens every output of a DataFrame prediction to 1-D, so the 2-D
probability output no longer fits the frame (seen with mlflow-skinny 3.18). It prints one
JSON line with the seconds and the rows. MLflow's ONNX flavour builds its
onnxruntime session with default options, so onnxruntime may use every core.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import mlflow.onnx
import mlflow.pyfunc
import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq


def prediction_table(outputs: dict[str, np.ndarray]) -> pa.Table:
    """Keep the 1-D output as the prediction and the row maximum of the 2-D one as the score."""
    columns = {}
    for values in outputs.values():
        if values.ndim == 2:
            columns["score"] = values.max(axis=1)
        elif "prediction" not in columns:
            columns["prediction"] = values

    return pa.table(columns)


def main() -> None:
    model_path, data_path, batch_text, *features = sys.argv[1:]
    with tempfile.TemporaryDirectory() as folder:
        saved = str(Path(folder) / "model")
        mlflow.onnx.save_model(onnx.load(model_path), saved)
        output_path = Path(folder) / "predictions.parquet"

        started = time.perf_counter()
        model = mlflow.pyfunc.load_model(saved)
        writer = None
        rows = 0
        parquet = pq.ParquetFile(data_path)
        for batch in parquet.iter_batches(batch_size=int(batch_text), columns=features):
            matrix = np.column_stack([column.to_numpy() for column in batch.columns])
            table = prediction_table(model.predict(matrix))
            if writer is None:
                writer = pq.ParquetWriter(output_path, table.schema)
            writer.write_table(table)
            rows += batch.num_rows
        if writer is not None:
            writer.close()
        seconds = time.perf_counter() - started

    print(json.dumps({"seconds": seconds, "rows": rows}))


if __name__ == "__main__":
    main()
