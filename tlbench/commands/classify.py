"""``tlbench classify RUN_DIR_OR_CKPT IMAGE_OR_DIR [...]``: label new images with a trained model."""

from __future__ import annotations

import pandas as pd

from tlbench.commands import show_progress
from tlbench.models.engine_name import EngineName


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


def classify(
    model: str,
    inputs: list[str],
    top_k: int = 3,
    output: str | None = None,
    phase: str | None = None,
    batch_size: int = 32,
    progress: bool | None = None,
    engine: EngineName = "auto",
) -> int:
    """Label new images with a trained model: tlbench's way to use one (``predict`` is Lightning's route).

    Exit status 0 when every file was classified, 1 when some could not be read. Unlike ``predict``, which needs
    the run's config.yaml and a checkpoint path, it takes the run directory (or a .ckpt) and any images or folders.

    Args:
        model: a run directory (lightning_logs/<experiment>/version_N) or a .ckpt file written by tlbench fit.
        inputs: image files and/or folders (searched recursively; any case of .jpg/.png/.bmp/.webp/.tif).
        top_k: most probable classes listed per image.
        output: also write the table as CSV here (path, top1_label, top1_prob, ..., error).
        phase: with a run directory, the phase whose best checkpoint is used (default: the final model).
        batch_size: images decoded and run through the model at once (bounds memory on large folders).
        progress: progress bar on stderr (default: only when stderr is a terminal).
        engine: auto (ONNX Runtime on a CPU, torch on a GPU), torch or onnxruntime.
    """
    from tlbench.classify import classify_files  # torch: imported once the arguments parsed

    result = classify_files(model, inputs, top_k, phase, batch_size, output, show_progress(progress), engine)
    trained = result.trained
    print(f"{trained.backbone} ({trained.phase}) from {trained.source}: {len(result.table)} image(s)")
    print(format_table(result.table))
    if result.csv:
        print(f"wrote {result.csv}")
    if result.failed:
        print(f"{result.failed} file(s) could not be classified (see error column)")
    return 1 if result.failed else 0
