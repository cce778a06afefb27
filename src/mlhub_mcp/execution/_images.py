"""The local engine for image datasets: streams a stored .npz through a model."""

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio.to_thread
import numpy as np
import pyarrow.parquet as pq

from mlhub_mcp.datasets._images import open_image_arrays
from mlhub_mcp.errors import SchemaMismatch
from mlhub_mcp.execution._local import RunOutput, RunSpec, prediction_table
from mlhub_mcp.models._formats import Predictor

ProgressCallback = Callable[[float, float | None, str | None], Awaitable[None]]
CheckpointCallback = Callable[[int], Awaitable[None]]

_PROGRESS_INTERVAL = 0.2
_CHECKPOINT_INTERVAL = 1.0


class ImageBatchRunner:
    """Runs the batches of one execution over images; every method runs in a worker thread.

    Models that declare ``accepts_images`` get uint8 batches of shape
    (N, height, width, channels). Other models, such as a scikit-learn
    classifier trained on flattened pixels, get (N, height * width * channels)
    float32 rows.
    """

    def __init__(self, predictor: Predictor, dataset_path: Path, spec: RunSpec) -> None:
        if spec.label_column not in (None, "label"):
            raise SchemaMismatch(
                f"the labels of an image dataset are in column 'label'; "
                f"got label_column {spec.label_column!r}"
            )

        self.predictor = predictor
        self.spec = spec
        self.images, self.labels, self.classes = open_image_arrays(dataset_path)
        self.flatten = not getattr(predictor, "accepts_images", False)
        if self.flatten:
            width = int(np.prod(self.images.shape[1:]))
            expected = predictor.input_width
            if expected is not None and expected != width:
                raise SchemaMismatch(
                    f"the model expects {expected} features but the images have "
                    f"{width} values each ({' x '.join(map(str, self.images.shape[1:]))})"
                )

        self.output = RunOutput()
        self._writer: pq.ParquetWriter | None = None
        self.finished = len(self.images) == 0

    def step(self, time_budget: float = 0.05) -> int:
        """Run batches for about ``time_budget`` seconds; return the rows done so far."""
        deadline = time.perf_counter() + time_budget
        while not self.finished and time.perf_counter() < deadline:
            start = self.output.rows
            stop = min(start + self.spec.batch_size, len(self.images))
            self._run_batch(start, stop)
            self.finished = stop >= len(self.images)

        return self.output.rows

    def _run_batch(self, start: int, stop: int) -> None:
        # Copy the slice out of the memory map, so the model gets an ordinary array.
        batch = np.array(self.images[start:stop])
        if self.flatten:
            batch = batch.reshape(len(batch), -1).astype(np.float32)
        predictions, scores = self.predictor.predict(batch)

        labels = None
        if self.spec.label_column:
            labels = np.asarray(self.labels[start:stop])
            self.output.labels.append(labels)
        self.output.predictions.append(predictions)

        table = prediction_table(start, predictions, scores, labels)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.spec.output_path, table.schema)
        self._writer.write_table(table)
        self.output.rows = stop

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


async def run_images(
    predictor: Predictor,
    dataset_path: Path,
    spec: RunSpec,
    progress: ProgressCallback,
    checkpoint: CheckpointCallback | None = None,
) -> RunOutput:
    """Run ``predictor`` over a stored image dataset and write the predictions Parquet file.

    The file at ``spec.output_path`` gets the columns row, prediction, score
    (when the model gives probabilities) and label (with ``spec.label_column``).
    ``checkpoint``, when given, receives the rows done about once a second and
    may raise to stop the run.

    Raises:
        SchemaMismatch: The dataset does not fit the model.
    """
    runner = await anyio.to_thread.run_sync(ImageBatchRunner, predictor, dataset_path, spec)
    total = len(runner.images)
    last_report = 0.0
    last_checkpoint = time.monotonic()
    try:
        while not runner.finished:
            rows = await anyio.to_thread.run_sync(runner.step)
            now = time.monotonic()
            if now - last_report >= _PROGRESS_INTERVAL or runner.finished:
                last_report = now
                await progress(rows, total, f"{rows}/{total} images")
            if checkpoint is not None and now - last_checkpoint >= _CHECKPOINT_INTERVAL:
                last_checkpoint = now
                await checkpoint(rows)
    finally:
        await anyio.to_thread.run_sync(runner.close)

    return runner.output
