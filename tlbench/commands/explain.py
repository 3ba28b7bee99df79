"""``tlbench explain RUN IMAGE_OR_DIR [...]``: Grad-CAM overlays of where a trained model looked."""

from __future__ import annotations


def explain(
    model: str, inputs: list[str], output: str = "explanations", phase: str | None = None, batch_size: int = 16
) -> int:
    """Explain each image's predicted class with Grad-CAM: one overlay PNG per image and explanations.csv.

    Needs Captum (pip install 'tlbench[explain]'). A missing model, a missing or unreadable image is one line,
    exit 2, before anything is written.

    Args:
        model: a run directory (lightning_logs/<experiment>/version_N), a .ckpt written by tlbench fit, or a bundle.
        inputs: image files and/or folders (searched recursively; any case of .jpg/.png/.bmp/.webp/.tif).
        output: folder for the overlays (NNNN_<image name>.png) and the index explanations.csv.
        phase: with a run directory, the phase whose best checkpoint is used (default: the final model).
        batch_size: images per forward and backward pass.
    """
    from tlbench.explain import INDEX, explain_files  # torch: imported once the arguments parsed

    result = explain_files(model, inputs, output, phase, batch_size)
    print(f"{result.backbone} ({result.phase}), Grad-CAM on layer '{result.layer}': {len(result.table)} image(s)")
    width = max(len(str(path)) for path in result.table.path)
    for row in result.table.to_dict("records"):
        truth = f"  true {row['true_label']}" if row["true_label"] else ""
        print(f"{row['path']:<{width}}  {row['pred_label']} ({row['pred_prob']:.3f}){truth}  -> {row['overlay']}")
    print(f"wrote {len(result.table)} overlay(s) and {INDEX} to {result.output}")
    return 0
