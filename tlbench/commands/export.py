"""``tlbench export RUN_DIR``: a self-contained, parity-checked bundle for serving and deployment."""

from __future__ import annotations


def export(
    run: str,
    phase: str | None = None,
    format: str = "safetensors",
    output: str | None = None,
    quantize: str | None = None,
    push: str | None = None,
) -> None:
    """Export RUN's final (or --phase) model as a bundle: weights.safetensors + model.json and the --format files.

    Args:
        run: run directory (lightning_logs/<experiment>/version_N).
        phase: head or finetune (default: the final model, metrics.json "final").
        format: comma-separated formats: safetensors (always written), onnx, onnx-standalone (uint8 crops in,
            normalisation, softmax, classes and preprocessing inside: needs only onnxruntime), torchscript, openvino
            (IR, pip install 'tlbench[openvino]'), tflite (LiteRT, pip install 'tlbench[tflite]'), coreml
            (ML program classifier, pip install 'tlbench[coreml]'; converted but NOT parity-checked: Core ML runs
            only on Apple systems); or hf alone: a timm folder (config.json, model.safetensors, README.md model
            card) for runs fitted with --model.head_hidden 0 (default output RUN/hf_<phase>).
        output: bundle folder to create (default: RUN/export_<phase>); must not exist yet.
        quantize: int8: also model.int8.onnx (and model.onnx), onnxruntime static quantisation calibrated on the
            run's training images; refused unless it agrees with fp32 on >= 99% of the test images and McNemar
            finds no significant difference.
        push: with --format hf, upload the folder to this Hugging Face Hub repository (ORG/NAME; untested here).
    """
    from tlbench.export import export_bundle  # torch: imported once the arguments parsed

    bundle, parity = export_bundle(run, phase, format, output, quantize, push)
    differences = ", ".join(f"{name} {diff:.1e}" for name, diff in parity["max_abs_diff"].items())
    print(f"wrote {bundle}")
    print(
        f"parity on {parity['inputs']}: max abs probability difference {differences}"
        f" (tolerance {parity['tolerance']:g})"
    )
    for name, why in parity.get("unchecked", {}).items():
        print(f"{name}: not parity-checked ({why})")
    if "int8" in parity:
        check, sizes = parity["int8"], parity["int8"]["size_bytes"]
        print(
            f"int8: agrees with fp32 on {check['agreement']:.1%} of {check['n']} {check['test_on']} images"
            f" (accuracy {check['fp32_acc']:.3f} fp32, {check['int8_acc']:.3f} int8;"
            f" McNemar p={check['mcnemar_p']:.2g});"
            f" {sizes['int8'] / 1e6:.1f} MB, {sizes['int8'] / sizes['fp32']:.0%} of fp32;"
            f" calibrated on {check['calibration_images']} training images"
        )
    if "pushed" in parity:
        print(f"pushed to {parity['pushed']}")
