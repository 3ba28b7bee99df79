"""``python -m tlbench export RUN_DIR``: a self-contained, parity-checked bundle for serving and deployment."""

from __future__ import annotations

from tlbench.export import export_bundle


def export(run: str, phase: str | None = None, format: str = "safetensors", output: str | None = None) -> None:
    """Export RUN's best checkpoint as weights.safetensors + model.json (+ model.onnx, model.standalone.onnx,
    model.torchscript.pt).

    Args:
        run: run directory (lightning_logs/<experiment>/version_N).
        phase: head or finetune (default: the final model, metrics.json "final").
        format: comma-separated formats: safetensors (always written), onnx, onnx-standalone (uint8 crops in,
            normalisation, softmax, classes and preprocessing inside: needs only onnxruntime), torchscript.
        output: bundle folder to create (default: RUN/export_<phase>); must not exist yet.
    """
    bundle, parity = export_bundle(run, phase, format, output)
    differences = ", ".join(f"{name} {diff:.1e}" for name, diff in parity["max_abs_diff"].items())
    print(f"wrote {bundle}")
    print(
        f"parity on {parity['inputs']}: max abs probability difference {differences}"
        f" (tolerance {parity['tolerance']:g})"
    )
