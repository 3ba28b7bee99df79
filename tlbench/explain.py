"""``tlbench explain RUN IMAGES`` and ``Model.explain``: Grad-CAM overlays of a run's final model saved as PNGs with
their predicted and true labels, and an index CSV. The Grad-CAM itself (target layer, heatmap, mapping back onto
the photo) is ``tlbench.models.gradcam``, which a fit's top-losses figure uses too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tlbench.classify import expand_inputs
from tlbench.data.images import ImageLoadError, image_size, load_rgb
from tlbench.errors import TLBenchError
from tlbench.evaluation.plots import plot_explanation
from tlbench.io import read_csv, write_csv
from tlbench.models.gradcam import Explainer, Explanation, require_captum
from tlbench.models.loading import load_trained
from tlbench.rundir import METRICS, read_metrics

INDEX = "explanations.csv"


def load_images(paths: list[Path]) -> list[Image.Image]:
    """Every image decoded, or one line naming the first file that is not one."""
    images = []
    for path in paths:
        try:
            images.append(load_rgb(path))
        except ImageLoadError as error:
            raise TLBenchError(f"{path}: {error}; pass image files") from None
    return images


def check_images(paths: list[Path]) -> None:
    """Refuse, from the headers alone and before any work, a path that is missing or not an image."""
    for path in paths:
        try:
            image_size(path)
        except ImageLoadError as error:
            raise TLBenchError(f"{path}: {error}; pass image files") from None


def true_labels(paths: list[Path], classes: list[str], run: Path | None) -> list[str]:
    """Each image's true class where it is known: its row in the run's ``split.csv`` when the image lies under
    the run's data root, else its folder's name when that is one of the classes; "" when neither says."""
    known: dict[Path, str] = {}
    if run is not None and (run / "split.csv").is_file() and (run / METRICS).is_file():
        root = Path(read_metrics(run).get("data_root", ""))
        split = read_csv(run / "split.csv", keep_default_na=False, dtype=str)
        known = {(root / path).resolve(): str(label) for path, label in zip(split.path, split.label)}
    labels = []
    for path in paths:
        resolved = path.resolve()
        folder = resolved.parent.name
        labels.append(known.get(resolved, folder if folder in classes else ""))
    return labels


def _title(label: str, probability: float, truth: str) -> str:
    verdict = "" if not truth else " (right)" if truth == label else " (wrong)"
    return f"predicted {label} ({probability:.2f}){verdict}" + (f" | true {truth}" if truth else "")


def save_explanation(item: Explanation, truth: str, output: Path, name: str, layer: str) -> dict:
    """``item``'s overlay PNG as ``output/name``, titled with the predicted and true labels; its index row."""
    plot_explanation(np.asarray(item.image), item.overlay(), _title(item.label, item.probability, truth), output / name)
    x, y = item.peak
    return {
        "path": item.path,
        "overlay": name,
        "pred_label": item.label,
        "pred_prob": round(item.probability, 6),
        "true_label": truth,
        "peak_x": x,
        "peak_y": y,
        "layer": layer,
    }


@dataclass
class ExplainResult:
    """What ``explain_files`` did: one row per image (also written as ``INDEX`` beside the overlays)."""

    table: pd.DataFrame
    output: Path
    index: Path
    backbone: str
    phase: str
    layer: str


def explain_files(
    model: str | Path,
    inputs: list[str],
    output: str | Path = "explanations",
    phase: str | None = None,
    batch_size: int = 16,
) -> ExplainResult:
    """Grad-CAM overlays of image files and folders with a trained model (run directory, ``.ckpt`` or bundle).

    Images are decoded, explained and written ``batch_size`` at a time, so a large folder never sits in memory.
    Overlays are numbered (``0001_<name>.png``) so two images of the same name from different folders both stay.

    Args:
        model: a run directory, a ``.ckpt`` written by ``fit``, or an exported bundle.
        inputs: image files and/or folders (searched recursively).
        output: folder for the overlay PNGs and ``explanations.csv``.
        phase: with a run directory, the phase whose best checkpoint is used (default: the final model).
        batch_size: images per forward and backward pass.
    """
    require_captum()
    if batch_size < 1:
        raise TLBenchError(f"--batch_size {batch_size} is below 1; pass --batch_size 1 or more")
    paths = expand_inputs(inputs)
    trained = load_trained(model, phase)
    check_images(paths)
    explainer = Explainer.of(trained.model)
    run = Path(model).expanduser()
    truths = true_labels(paths, trained.classes, run if run.is_dir() else None)
    output = Path(output)
    digits = max(4, len(str(len(paths))))
    rows = []
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        for offset, item in enumerate(explainer.explain(load_images(batch), [str(p) for p in batch], batch_size)):
            number = start + offset + 1
            name = f"{number:0{digits}d}_{Path(item.path).stem}.png"
            rows.append(save_explanation(item, truths[number - 1], output, name, explainer.layer_name))
    table = pd.DataFrame(rows)
    index = write_csv(output / INDEX, table)
    return ExplainResult(table, output, index, trained.backbone, trained.phase, explainer.layer_name)
