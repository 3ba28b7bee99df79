"""int8 ONNX models for CPUs: onnxruntime's static quantisation, kept only when it predicts as the fp32 model does.

``export --quantize int8`` quantises the bundle's fp32 ``model.onnx`` (same input and output: a normalised
float batch in, probabilities out) into ``model.int8.onnx``: QDQ format, weights int8 per output channel,
activations uint8 with ranges calibrated (min/max) on the run's own training images, after onnxruntime's
recommended pre-processing (shape inference and graph optimisation). On this project's CPU (AVX-512 VNNI)
onnxruntime runs the QDQ pairs around each convolution as integer kernels.

Quantisation changes outputs, so it cannot pass the 1e-4 parity check of the other formats; instead it must
agree with fp32 on the run's test predictions (``MIN_AGREEMENT``) and a paired exact McNemar test on the two
models' correctness must find no significant difference (``SIGNIFICANCE``). Either failure refuses the export.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tlbench.errors import TLBenchError
from tlbench.evaluation.stats import mcnemar_test

QUANTIZATIONS = ("int8",)
INT8_ONNX = "model.int8.onnx"
MIN_AGREEMENT = 0.99
SIGNIFICANCE = 0.05
# Calibration images at most (evenly spaced over the training split): min/max ranges settle within a few dozen
# images, and every calibration image runs through a graph that outputs every activation.
CALIBRATION_IMAGES = 128
CALIBRATION_BATCH = 8


def check_quantization(quantize: str | None) -> str | None:
    """``None`` or a known quantisation, lower-cased; one line for anything else."""
    if quantize is None:
        return None
    if quantize.lower() not in QUANTIZATIONS:
        raise TLBenchError(f"unknown --quantize {quantize!r}; choose {', '.join(QUANTIZATIONS)} or leave it out")
    return quantize.lower()


def quantize_int8(fp32: Path, output: Path, calibration: np.ndarray, input_name: str) -> None:
    """Statically quantise the graph ``fp32`` to ``output``, calibrated on ``calibration`` (normalised float
    ``N x 3 x S x S`` images)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            starts = range(0, len(calibration), CALIBRATION_BATCH)
            self.batches = iter([calibration[i : i + CALIBRATION_BATCH] for i in starts])

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    prepared = output.with_name(output.name + ".prepared")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime's quantiser logs advice on the root logger
    try:
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(
            str(prepared),
            str(output),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    finally:
        root.setLevel(level)
        prepared.unlink(missing_ok=True)


def int8_verdict(fp32_predictions, int8_predictions, labels) -> dict:
    """Agreement of the two models' predicted classes and the exact McNemar test on their correctness; ``refused``
    says why the int8 model may not be kept (``None`` when it may)."""
    fp32_predictions, int8_predictions, labels = map(np.asarray, (fp32_predictions, int8_predictions, labels))
    n = len(labels)
    agreement = float(np.mean(fp32_predictions == int8_predictions)) if n else float("nan")
    test = mcnemar_test(fp32_predictions == labels, int8_predictions == labels)
    report = {
        "n": n,
        "agreement": agreement,
        "fp32_acc": float(np.mean(fp32_predictions == labels)) if n else float("nan"),
        "int8_acc": float(np.mean(int8_predictions == labels)) if n else float("nan"),
        "mcnemar_p": test.p_value,
        "mcnemar_b": test.b,
        "mcnemar_c": test.c,
    }
    reasons = []
    if not agreement >= MIN_AGREEMENT:
        reasons.append(f"it agrees with fp32 on {agreement:.1%} of {n} test images (needs {MIN_AGREEMENT:.0%})")
    if test.p_value < SIGNIFICANCE:
        reasons.append(
            f"McNemar p={test.p_value:.2g} < {SIGNIFICANCE}: int8 right where fp32 is wrong on {test.c}"
            f" images, wrong where fp32 is right on {test.b}"
        )
    report["refused"] = "; ".join(reasons) or None
    return report


def check_int8(
    fp32: Path, int8: Path, images: np.ndarray, labels: list[int], session: Callable, input_name: str
) -> dict:
    """Predictions of both graphs on the test ``images`` and ``int8_verdict`` on them, with both file sizes."""
    predictions = [
        session(graph).run(None, {input_name: images})[0].argmax(axis=1) if len(images) else np.empty(0, int)
        for graph in (fp32, int8)
    ]
    report = int8_verdict(*predictions, labels)
    report["size_bytes"] = {"fp32": fp32.stat().st_size, "int8": int8.stat().st_size}
    return report
