"""int8 (and OpenVINO, TFLite) against fp32 ONNX Runtime on a real run: images per second at batch 32 and 1, size.

    python benchmarks/export_int8.py RUN_DIR [--threads 2] [--seconds 5] [--rounds 3]

Exports RUN_DIR with ``--quantize int8`` (and ``--format openvino`` when OpenVINO is installed: the IR run in
float32 on the CPU, as the export checks it; ``--format tflite`` when litert-torch is: run by the LiteRT
interpreter with as many threads, and compared with fp32 ONNX Runtime on every test image) into a temporary folder
(every check runs as in ``tlbench export``), then times the graphs on the run's preprocessed test images (repeated
to fill a batch of 32), the engines alternating round by round so all see the same machine load; each figure is
the best round. Preprocessing is not timed: the graphs alone. On a CPU shared with other work absolute figures are
noisy; the ratios are the result.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from importlib.util import find_spec
from pathlib import Path

import numpy as np
from common import print_table, record_results

from tlbench.export import (
    OPENVINO_CONFIG,
    OPENVINO_XML,
    TFLITE_FILE,
    export_bundle,
    network_input,
    run_tflite,
    split_crops,
    tflite_interpreter,
)
from tlbench.models.loading import BUNDLE_ONNX, load_trained
from tlbench.models.ort import INPUT, ort_session
from tlbench.quantize import INT8_ONNX
from tlbench.rundir import read_metrics


def run_ort(session, batch: np.ndarray) -> None:
    session.run(None, {INPUT: batch})


def images_per_second(run, batch: np.ndarray, seconds: float) -> float:
    run(batch)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(batch)
        done += len(batch)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing per graph, batch size and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    trained = load_trained(args.run)
    crops, _ = split_crops(args.run, trained.preprocessing, read_metrics(args.run).get("test_on", "test"))
    images = network_input(crops, trained.preprocessing).numpy()
    batches = {32: np.resize(images, (32, *images.shape[1:])), 1: images[:1]}
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        formats = ",".join(
            [
                "onnx",
                *(["openvino"] if find_spec("openvino") else []),
                *(["tflite"] if find_spec("litert_torch") else []),
            ]
        )
        bundle, parity = export_bundle(args.run, formats=formats, quantize="int8", output=Path(scratch) / "bundle")
        export_seconds = time.perf_counter() - start
        runners = {
            name: partial(run_ort, ort_session(bundle / file, args.threads))
            for name, file in (("fp32", BUNDLE_ONNX), ("int8", INT8_ONNX))
        }
        if "openvino" in parity["max_abs_diff"]:
            import openvino

            config = {**OPENVINO_CONFIG, "INFERENCE_NUM_THREADS": args.threads}
            runners["openvino fp32"] = openvino.Core().compile_model(str(bundle / OPENVINO_XML), "CPU", config)
        sizes = dict(parity["int8"]["size_bytes"])
        if "tflite" in parity["max_abs_diff"]:
            runners["tflite fp32"] = partial(run_tflite, tflite_interpreter(bundle / TFLITE_FILE, args.threads))
            sizes["tflite fp32"] = (bundle / TFLITE_FILE).stat().st_size
            tflite_test = run_tflite(tflite_interpreter(bundle / TFLITE_FILE, args.threads), images)
            fp32_test = ort_session(bundle / BUNDLE_ONNX, args.threads).run(None, {INPUT: images})[0]
        best = {(name, size): 0.0 for name in runners for size in batches}
        for _ in range(args.rounds):
            for size, batch in batches.items():
                for name, run in runners.items():
                    best[name, size] = max(best[name, size], images_per_second(run, batch, args.seconds))
    check = parity["int8"]
    rows = [
        (f"img/s batch {size}, {name}", f"{best[name, size]:.1f}", f"{best[name, size] / best['fp32', size]:.2f}x")
        for size in batches
        for name in runners
    ]
    rows += [
        (f"file size {name}", f"{sizes[name] / 1e6:.1f} MB", f"{sizes[name] / sizes['fp32']:.0%}") for name in sizes
    ]
    if "openvino fp32" in runners:
        difference = parity["max_abs_diff"]["openvino"]
        rows.append(("openvino max abs probability difference", f"{difference:.1e}", "on the parity images"))
    if "tflite fp32" in runners:
        agree = float((tflite_test.argmax(1) == fp32_test.argmax(1)).mean())
        difference = float(np.abs(tflite_test - fp32_test).max())
        rows.append(
            ("tflite vs fp32 ONNX Runtime", f"{difference:.1e} max abs", f"{agree:.0%} same class, {len(images)} test")
        )
    rows += [
        ("test agreement", f"{check['agreement']:.1%} of {check['n']}", f"McNemar p={check['mcnemar_p']:.2g}"),
        ("test accuracy fp32 / int8", f"{check['fp32_acc']:.3f} / {check['int8_acc']:.3f}", ""),
        ("export + quantise + check", f"{export_seconds:.0f} s", f"{check['calibration_images']} calibration images"),
    ]
    print_table(f"{trained.backbone} {trained.phase}, {args.threads} ONNX Runtime threads", rows)


if __name__ == "__main__":
    record_results(main)
