"""``python -m tlbench classify RUN_DIR_OR_CKPT IMAGE_OR_DIR [...]``: label new images with a trained model.

Images go through ``load_rgb`` and the model's own saved preprocessing, exactly as in training and test, so a
photo gets the same answer here as in ``predictions_<phase>.csv``. One bad file costs one row, never the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from tlbench.data.discover import images_under
from tlbench.data.images import ImageLoadError, load_rgb
from tlbench.errors import TLBenchError
from tlbench.io import write_csv
from tlbench.models.inference import Predictor
from tlbench.models.loading import load_trained


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given (a non-image among them gets an error row); folders searched recursively for images.

    Folders follow the data rules: image extensions in any case, hidden and OS files (``.DS_Store``,
    ``__MACOSX``) skipped. A path that does not exist is kept so that its row says "file not found".
    """
    paths = []
    for item in inputs:
        path = Path(item).expanduser()
        paths += images_under(path) if path.is_dir() else [path]
    return paths


def _batches(paths: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(paths), size):
        yield paths[start : start + size]


def classify_paths(predictor: Predictor, paths: list[Path], top_k: int) -> pd.DataFrame:
    """One row per path: ``path, top1_label, top1_prob, ..., error`` (labels empty and error set on failure).

    Images are decoded one batch at a time, so a folder of thousands of photos never sits in memory at once.
    """
    k = min(top_k, len(predictor.trained.classes))
    rows = []
    progress = tqdm(total=len(paths), unit="image", disable=True if len(paths) <= predictor.batch_size else None)
    for batch in _batches(paths, predictor.batch_size):
        images, loaded, errors = [], [], {}
        for path in batch:
            try:
                images.append(load_rgb(path))
                loaded.append(path)
            except ImageLoadError as error:
                errors[path] = str(error)
        predictions = dict(zip(loaded, predictor.top_k(images, k))) if images else {}
        for path in batch:
            row: dict = {"path": str(path)}
            for rank, (label, prob) in enumerate(predictions.get(path, []), 1):
                row[f"top{rank}_label"], row[f"top{rank}_prob"] = label, round(prob, 6)
            row["error"] = errors.get(path, "")
            rows.append(row)
        progress.update(len(batch))
    progress.close()
    columns = ["path", *(f"top{r}_{kind}" for r in range(1, k + 1) for kind in ("label", "prob")), "error"]
    return pd.DataFrame(rows).reindex(columns=columns)


def format_table(table: pd.DataFrame) -> str:
    """``path  label (p)  label (p) ...`` per image, or ``path  error: reason``, paths aligned."""
    width = max(len(str(path)) for path in table.path)
    ranks = [column.removesuffix("_label") for column in table.columns if column.endswith("_label")]
    lines = []
    for row in table.to_dict("records"):
        if row["error"]:
            detail = f"error: {row['error']}"
        else:
            detail = "  ".join(f"{row[f'{r}_label']} ({row[f'{r}_prob']:.3f})" for r in ranks)
        lines.append(f"{row['path']:<{width}}  {detail}")
    return "\n".join(lines)


def classify(model: str, inputs: list[str], top_k: int = 3, output: str | None = None, phase: str | None = None, batch_size: int = 32) -> int:
    """Classify images with a trained model; exit 0 when every file was classified, 1 when some could not be read.

    Args:
        model: a run directory (lightning_logs/<experiment>/version_N) or a .ckpt file written by tlbench fit.
        inputs: image files and/or folders (searched recursively; any case of .jpg/.png/.bmp/.webp/.tif).
        top_k: most probable classes listed per image.
        output: also write the table as CSV here (path, top1_label, top1_prob, ..., error).
        phase: with a run directory, the phase whose best checkpoint is used (default: finetune if trained, else head).
        batch_size: images decoded and run through the model at once (bounds memory on large folders).
    """
    if top_k < 1 or batch_size < 1:
        raise TLBenchError(f"--top_k and --batch_size must be at least 1 (got {top_k} and {batch_size})")
    paths = expand_inputs(inputs)
    if not paths:
        raise TLBenchError(f"no image files in {', '.join(inputs)} (looked for .jpg, .jpeg, .png, .bmp, .webp, .tif, any case)")
    trained = load_trained(model, phase)
    table = classify_paths(Predictor(trained, batch_size), paths, top_k)
    print(f"{trained.backbone} ({trained.phase}) from {trained.source}: {len(table)} image(s)")
    print(format_table(table))
    if output:
        print(f"wrote {write_csv(output, table)}")
    failed = int((table.error != "").sum())
    if failed:
        print(f"{failed} file(s) could not be classified (see error column)")
    return 1 if failed else 0
