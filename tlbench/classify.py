"""Label new images with a trained model: ``classify_files`` for files and folders, ``classify_paths`` for a list.

Images go through ``load_rgb`` and the model's own saved preprocessing, exactly as in training and test, so a
photo gets the same answer here as in ``predictions_<phase>.csv``. One bad file costs one row, never the run.

Once ONNX Runtime makes the forward pass cheap, decoding and resizing photos is most of the work: it runs on a
pool of threads (Pillow releases the GIL while it decodes and resizes), one per core, and the next batch is
decoded while the current one is classified. A checkpoint classified before skips torch altogether: its graph,
checked against torch by that first call, runs on its own (models/graph_classifier.py; 0.7 s for one photo
instead of about 5).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from tqdm import tqdm

from tlbench.data.discover import images_under
from tlbench.data.images import ImageLoadError, load_rgb
from tlbench.errors import TLBenchError
from tlbench.io import write_csv
from tlbench.machine import usable_cores
from tlbench.models.engine_name import EngineName
from tlbench.models.graph_classifier import GraphModel, GraphPredictor, cached_classifier, remember_classifier

if TYPE_CHECKING:
    from tlbench.models.inference import Predictor
    from tlbench.models.loading import TrainedModel


@dataclass
class Classification:
    """What ``classify_files`` did: the model used (a ``TrainedModel``, or a ``GraphModel`` when the checkpoint's
    verified graph ran without torch), one row per file, and the CSV written (if asked for)."""

    trained: TrainedModel | GraphModel
    table: pd.DataFrame
    csv: Path | None

    @property
    def failed(self) -> int:
        """Files that could not be classified (their ``error`` column says why)."""
        return int((self.table.error != "").sum())


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given (a non-image among them gets an error row); folders searched recursively for images.

    Folders follow the data rules: image extensions in any case, hidden and OS files (``.DS_Store``,
    ``__MACOSX``) skipped. A path that does not exist is kept so that its row says "file not found". Nothing at
    all to read is one error line.
    """
    paths = []
    for item in inputs:
        path = Path(item).expanduser()
        paths += images_under(path) if path.is_dir() else [path]
    if not paths:
        raise TLBenchError(
            f"no image files in {', '.join(inputs)} (looked for .jpg, .jpeg, .png, .bmp, .webp, .tif, any case);"
            " pass image files or folders that hold them"
        )
    return paths


def _batches(paths: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(paths), size):
        yield paths[start : start + size]


def _prepared(predictor: Predictor | GraphPredictor, path: Path) -> Any:
    """The model's input for ``path`` (a tensor, or an array without torch), or why the file cannot be read."""
    try:
        return predictor.transform(load_rgb(path))
    except ImageLoadError as error:
        return str(error)


def classify_paths(
    predictor: Predictor | GraphPredictor, paths: list[Path], top_k: int, progress: bool = False
) -> pd.DataFrame:
    """One row per path: ``path, top1_label, top1_prob, ..., error`` (labels empty and error set on failure).

    Images are decoded one batch ahead of the one being classified, so a folder of thousands of photos never sits
    in memory at once. ``progress`` shows a bar on stderr.
    """
    k = min(top_k, len(predictor.trained.classes))
    rows = []
    batches = list(_batches(paths, predictor.batch_size))
    with (
        ThreadPoolExecutor(max_workers=usable_cores()) as pool,
        tqdm(total=len(paths), desc="classifying", unit="image", disable=not progress) as bar,
    ):

        def submit(batch: list[Path]) -> list[Future]:
            return [pool.submit(_prepared, predictor, path) for path in batch]

        pending = submit(batches[0]) if batches else []
        for index, batch in enumerate(batches):
            prepared = [future.result() for future in pending]
            pending = submit(batches[index + 1]) if index + 1 < len(batches) else []
            loaded = [(path, item) for path, item in zip(batch, prepared) if not isinstance(item, str)]
            probs = predictor.forward(predictor.batch([item for _, item in loaded])) if loaded else None
            predictions = dict(zip((path for path, _ in loaded), predictor.label_top_k(probs, k))) if loaded else {}
            for path, item in zip(batch, prepared):
                row: dict = {"path": str(path)}
                for rank, (label, prob) in enumerate(predictions.get(path, []), 1):
                    row[f"top{rank}_label"], row[f"top{rank}_prob"] = label, round(prob, 6)
                row["error"] = item if isinstance(item, str) else ""
                rows.append(row)
            bar.update(len(batch))
    columns = ["path", *(f"top{r}_{kind}" for r in range(1, k + 1) for kind in ("label", "prob")), "error"]
    return pd.DataFrame(rows).reindex(columns=columns)


def classify_files(
    model: str | Path,
    inputs: list[str],
    top_k: int = 3,
    phase: str | None = None,
    batch_size: int = 32,
    output: str | Path | None = None,
    progress: bool = False,
    engine: EngineName = "auto",
) -> Classification:
    """Classify image files and folders with a trained model (run directory, ``.ckpt`` or bundle).

    Args:
        model: a run directory, a ``.ckpt`` written by ``fit``, or an exported bundle.
        inputs: image files and/or folders (searched recursively).
        top_k: most probable classes per image.
        phase: with a run directory, the phase whose best checkpoint is used (default: the last trained).
        batch_size: images decoded and run through the model at once (bounds memory on large folders).
        output: also write the table as CSV here.
        progress: show a progress bar on stderr.
        engine: auto (ONNX Runtime on a CPU, torch on a GPU), torch or onnxruntime (see ``Predictor``). With
            auto or onnxruntime, a checkpoint whose graph an earlier call checked against torch runs that graph
            without importing torch (models/graph_classifier.py).
    """
    if top_k < 1 or batch_size < 1:
        raise TLBenchError(f"--top_k {top_k} and --batch_size {batch_size}: pass 1 or more for each")
    paths = expand_inputs(inputs)
    graph = cached_classifier(model, phase) if engine != "torch" else None
    if graph is not None:
        table = classify_paths(GraphPredictor(graph, batch_size), paths, top_k, progress)
        return Classification(graph, table, write_csv(output, table) if output else None)
    from tlbench.models.inference import Predictor  # torch, torchvision and timm: seconds to import
    from tlbench.models.loading import load_trained

    trained = load_trained(model, phase)
    predictor = Predictor(trained, batch_size, engine)
    table = classify_paths(predictor, paths, top_k, progress)
    engine_used = predictor.engine
    if engine_used.name == "onnxruntime" and engine_used.max_abs_diff is not None and engine_used.graph_key:
        remember_classifier(trained, engine_used.graph_key)  # the graph that just passed its check
    return Classification(trained, table, write_csv(output, table) if output else None)
