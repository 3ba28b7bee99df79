"""``tlbench check``: what does the pretrained ImageNet classifier see in my data, and what should I train?"""

from __future__ import annotations

from pathlib import Path

from tlbench.commands import show_progress
from tlbench.models.engine_name import EngineName


def check(
    fit_config: str | None = None,
    data_root: str | None = None,
    backbone: str | None = None,
    per_class: int = 2,
    top_k: int = 5,
    output: str | None = None,
    seed: int = 0,
    progress: bool | None = None,
    engine: EngineName = "auto",
) -> None:
    """Show ImageNet's predictions on a few images per class and recommend head-only or fine-tuning.

    Writes ``check.csv`` (one row per image: class, path, top-k ImageNet labels and probabilities) and
    ``contact_sheet.png`` (thumbnails with their top-3 labels) to ``output``. Also typed as ``fit`` is:
    ``--data.root`` and ``--model.backbone``.

    Args:
        fit_config: a fit config (shipped name or a run's config.yaml), typed ``--config`` as for fit; its data
            root and backbone are the defaults.
        data_root: the data folder (class folders, or train/val[/test]); wins over the config's.
        backbone: timm backbone with ImageNet weights; wins over the config's (default: efficientnet_lite2).
        per_class: images looked at per class.
        top_k: ImageNet labels listed per image.
        output: folder for check.csv and contact_sheet.png (default: lightning_logs/check/<dataset>_<backbone>).
        seed: which images are sampled.
        progress: progress bar on stderr (default: only when stderr is a terminal).
        engine: auto (ONNX Runtime on a CPU, torch on a GPU), torch or onnxruntime.
    """
    from tlbench.check import check_dataset, format_labels  # torch: imported once the arguments parsed

    result = check_dataset(
        fit_config, data_root, backbone, per_class, top_k, output, seed, show_progress(progress), engine
    )
    predictions = result.predictions
    print(
        f"{result.backbone} ImageNet predictions on {len(predictions)} images of {result.root}"
        f" ({per_class} per class, seed {seed})"
    )
    for row in predictions.to_dict("records"):
        print(f"  {row['label']}/{Path(row['path']).name}: {row['error'] or format_labels(row, top_k)}")
    print(
        "per class: confidence = mean top-1 probability; consistency = share with the class's most common top-1 label"
    )
    for row in result.summary.itertuples(index=False):
        collision = f"  (same label as {row.collides_with})" if row.collides_with else ""
        print(
            f"  {row.label:<24} confidence {row.confidence:.2f}  consistency {row.consistency:.2f}"
            f"  -> {row.imagenet_label}{collision}"
        )
    print(f"recommendation: {result.advice.advice}")
    print(f"reason: {result.advice.reason}")
    print(f"wrote {result.csv} and {result.contact_sheet}")
