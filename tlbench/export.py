"""Export a trained run as a self-contained bundle that loads without tlbench's training stack or pickle.

A bundle is a folder:

* ``weights.safetensors``: the whole ``Network`` state dict (backbone and head), a checkpoint's as it is;
* ``model.json``: format version, backbone, the constructor settings that shape the network, classes in label
  order, the preprocessing (input size, resize size, crop, interpolation, mean/std), phase, source checkpoint,
  test metrics, and the parity check's results;
* optionally ``model.onnx`` and ``model.torchscript.pt``: the network from a normalised ``N x 3 x S x S``
  float batch to class probabilities (softmax applied; the preprocessing in ``model.json`` is the caller's job);
* optionally ``model.openvino.xml`` + ``.bin`` (format ``openvino``, the optional extra ``tlbench[openvino]``):
  OpenVINO IR of the same network as ``model.onnx``, converted from it, checked run in float32 on the CPU;
* optionally ``model.tflite`` (format ``tflite``, the optional extra ``tlbench[tflite]``): a LiteRT (TensorFlow
  Lite) flatbuffer of the same network and contract as ``model.onnx``, converted by litert-torch from
  ``torch.export`` and checked with the LiteRT interpreter;
* optionally ``model.mlpackage`` (format ``coreml``, the optional extra ``tlbench[coreml]``): a Core ML ML
  program converted by coremltools from ``torch.export``, a classifier of one normalised ``1 x 3 x S x S`` image
  (outputs ``classLabel`` and ``classLabel_probs``, the class names inside), computed in float32. It is the one
  format **not** parity-checked: Core ML predicts only on Apple systems, so here it is converted and its
  specification (input shape, outputs, class labels) read back, never run;
* optionally ``model.standalone.onnx`` (format ``onnx-standalone``): a graph that needs nothing else, for users
  without tlbench or torch. It takes ``uint8`` RGB crops ``N x S x S x 3`` (the image's short side resized to
  ``resize_size`` with ``interpolation``, then centre-cropped to ``S``), normalises them and applies the softmax
  inside, and carries the class names and that preprocessing in its ``metadata_props``
  (``docs/deployment.md`` has the ten lines of onnxruntime, Pillow and NumPy that run it).

Every exported form but Core ML is checked at export time against the PyTorch model on a few real test-split images:
the maximum absolute difference of probabilities must stay within ``PARITY_TOLERANCE`` or the export fails.
Files are written to a temporary folder beside the output and renamed into place only after every check
passed, so a failed or killed export never leaves a half-written bundle that ``load_trained`` would accept.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from tlbench.data.images import ImageLoadError, load_rgb
from tlbench.data.transforms import Preprocessing, eval_crop
from tlbench.errors import TLBenchError
from tlbench.hub import push as push_folder
from tlbench.hub import write_hf_folder
from tlbench.io import fsync_file, fsync_folder, read_csv, umask_mode, write_json
from tlbench.models.engine import PARITY_TOLERANCE, export_onnx
from tlbench.models.inference import Predictor, ProbabilityNetwork
from tlbench.models.loading import (
    ARCHITECTURE_SETTINGS,
    BUNDLE_FORMAT,
    BUNDLE_MANIFEST,
    BUNDLE_ONNX,
    BUNDLE_WEIGHTS,
    TrainedModel,
    load_bundle,
    load_trained,
)
from tlbench.models.ort import INPUT, PROBABILITIES, ort_session, ort_threads
from tlbench.quantize import CALIBRATION_IMAGES, INT8_ONNX, check_int8, check_quantization, quantize_int8
from tlbench.rundir import read_metrics

FORMATS = ("safetensors", "onnx", "onnx-standalone", "torchscript", "openvino", "tflite", "coreml", "hf")
TORCHSCRIPT_FILE = "model.torchscript.pt"
STANDALONE_ONNX = "model.standalone.onnx"
OPENVINO_XML = "model.openvino.xml"  # and model.openvino.bin, the weights
TFLITE_FILE = "model.tflite"
COREML_PACKAGE = "model.mlpackage"  # a folder
COREML_UNCHECKED = "converted, not run: Core ML predicts only on macOS/iOS"
# OpenVINO runs in bfloat16 on CPUs that have it (AVX-512 BF16, AMX) unless told otherwise: float32 keeps the
# 1e-4 parity check meaningful, and whoever loads the IR should ask for the same.
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
# What the standalone graph's metadata says about its input, for whoever opens it in Netron or onnxruntime.
STANDALONE_INPUT = (
    "uint8 RGB, N x input_size x input_size x 3: resize the short side to resize_size (long side int(resize_size *"
    " long / short)) with interpolation, then centre-crop input_size (offsets round((side - input_size) / 2))"
)
PARITY_IMAGES = 4
METRIC_KEYS = ("test_acc", "test_acc_ci95", "test_n", "test_macro_f1", "val_acc", "val_loss", "best_epoch")


def parse_formats(formats: str) -> list[str]:
    """``"onnx,torchscript"`` -> the requested formats; safetensors is always written (it is the bundle), except
    for ``hf``, a folder of its own (``tlbench/hub.py``) that is exported alone."""
    requested = [name.strip().lower() for name in formats.split(",") if name.strip()]
    unknown = sorted(set(requested) - set(FORMATS))
    if unknown:
        raise TLBenchError(
            f"unknown export format {', '.join(unknown)}; choose from {', '.join(FORMATS)} (comma-separated)"
        )
    if "hf" in requested:
        if set(requested) != {"hf"}:
            raise TLBenchError("--format hf writes a folder of its own; export it alone (--format hf)")
        return ["hf"]
    return [name for name in FORMATS if name == "safetensors" or name in requested]


def split_crops(
    run_dir: Path, preprocessing: Preprocessing, split_name: str, limit: int | None = None
) -> tuple[torch.Tensor, list[str]]:
    """The run's images of ``split_name`` (``split.csv``) that can still be read, resized and centre-cropped as
    ``uint8`` ``N x S x S x 3`` crops (what the standalone graph takes; ``network_input`` turns them into every
    other format's input), and their labels; at most ``limit``, evenly spaced over the split."""
    metrics = read_metrics(run_dir)
    split = (
        read_csv(run_dir / "split.csv")
        if (run_dir / "split.csv").is_file()
        else pd.DataFrame(columns=["path", "label", "split"])
    )
    rows = split[split["split"] == split_name]
    if limit is not None and len(rows) > limit:
        rows = rows.iloc[np.linspace(0, len(rows) - 1, limit).round().astype(int)]
    crop = eval_crop(preprocessing)
    crops, labels = [], []
    for relative, label in zip(rows["path"], rows["label"]):
        try:
            image = load_rgb(Path(metrics.get("data_root", "")) / relative)
        except ImageLoadError:
            continue
        crops.append(torch.from_numpy(np.asarray(crop(image)).copy()))
        labels.append(label)
    size = preprocessing.input_size
    return (torch.stack(crops) if crops else torch.empty(0, size, size, 3, dtype=torch.uint8)), labels


def parity_batch(run_dir: Path, preprocessing: Preprocessing, count: int = PARITY_IMAGES) -> tuple[torch.Tensor, str]:
    """A few test-split crops of the run (val when it has no test split; ``split_crops``) and where they came from.

    Falls back to seeded noise, said so in the description, when the run's data folder is gone (exporting on
    another machine): the check still compares the exported graphs, only on less realistic inputs.
    """
    metrics = read_metrics(run_dir)
    test_on = metrics.get("test_on", "test")
    crops, _ = split_crops(run_dir, preprocessing, test_on, count)
    if len(crops):
        return crops, f"{len(crops)} {test_on} images"
    size = preprocessing.input_size
    return torch.randint(
        0, 256, (count, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    ), f"{count} noise inputs (data root {metrics.get('data_root')} not readable)"


def network_input(crops: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """``uint8`` ``N x S x S x 3`` crops as the normalised ``N x 3 x S x S`` float batch the network takes."""
    return preprocessing.normalize(crops.permute(0, 3, 1, 2).contiguous())


class StandaloneNetwork(nn.Module):
    """``ProbabilityNetwork`` behind the normalisation: from ``uint8`` ``N x S x S x 3`` crops to probabilities,
    the arithmetic of ``Preprocessing.normalize`` traced into the graph."""

    def __init__(self, network: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.network((crops.permute(0, 3, 1, 2).float() / 255 - self.mean) / self.std)


def standalone_metadata(trained: TrainedModel) -> dict[str, str]:
    """The standalone graph's ``metadata_props``: classes in output order and the preprocessing, as strings."""
    pre = trained.preprocessing.to_dict()
    return {
        "classes": json.dumps(trained.classes),
        "input": STANDALONE_INPUT,
        "output": "probabilities, N x classes (softmax applied), in the order of classes",
        **{key: json.dumps(value) if isinstance(value, list) else str(value) for key, value in pre.items()},
        "backbone": trained.backbone,
        "phase": trained.phase,
    }


def manifest(trained: TrainedModel, run_dir: Path) -> dict:
    metrics = read_metrics(run_dir)
    phase_metrics = metrics.get("phases", {}).get(trained.phase, {})
    return {
        "format_version": BUNDLE_FORMAT,
        "backbone": trained.backbone,
        "model": {name: trained.model.architecture[name] for name in ARCHITECTURE_SETTINGS},
        "classes": trained.classes,
        "preprocessing": trained.preprocessing.to_dict(),
        "phase": trained.phase,
        "source_checkpoint": str(trained.source),
        "weights": trained.model.weights_source,
        "metrics": {
            "dataset": metrics.get("dataset"),
            "test_on": metrics.get("test_on"),
            **{k: phase_metrics[k] for k in METRIC_KEYS if k in phase_metrics},
        },
    }


def max_abs_diff(expected: torch.Tensor, actual: torch.Tensor) -> float:
    return float((expected - torch.as_tensor(actual)).abs().max())


def write_onnx(network: nn.Module, example: torch.Tensor, path: Path) -> torch.Tensor:
    """Export with a dynamic batch axis and return onnxruntime's probabilities for ``example``."""
    export_onnx(network, example, path, PROBABILITIES)
    return torch.from_numpy(ort_session(path).run([PROBABILITIES], {"images": example.numpy()})[0])


def write_standalone_onnx(trained: TrainedModel, network: nn.Module, crops: torch.Tensor, path: Path) -> torch.Tensor:
    """Export ``StandaloneNetwork``, add the metadata, and return onnxruntime's probabilities for ``crops``."""
    import onnx

    export_onnx(StandaloneNetwork(network, trained.preprocessing).eval(), crops, path, PROBABILITIES)
    graph = onnx.load(str(path))
    for key, value in standalone_metadata(trained).items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))
    return torch.from_numpy(ort_session(path).run([PROBABILITIES], {"images": crops.numpy()})[0])


def write_openvino(network: nn.Module, inputs: torch.Tensor, staging: Path) -> torch.Tensor:
    """OpenVINO IR converted from the ONNX export of ``network`` (the staged ``model.onnx``, or a temporary one);
    returns OpenVINO's probabilities for ``inputs``, run on the CPU in float32."""
    try:
        import openvino
    except ImportError:
        raise TLBenchError(
            "--format openvino needs OpenVINO: pip install 'tlbench[openvino]' (or pip install openvino)"
        ) from None
    source = staging / BUNDLE_ONNX
    temporary = not source.is_file()
    if temporary:
        source = staging / ".openvino-source.onnx"
        export_onnx(network, inputs, source, PROBABILITIES)
    try:
        openvino.save_model(openvino.convert_model(str(source)), str(staging / OPENVINO_XML), compress_to_fp16=False)
    finally:
        if temporary:
            source.unlink()
    compiled = openvino.Core().compile_model(str(staging / OPENVINO_XML), "CPU", OPENVINO_CONFIG)
    return torch.from_numpy(compiled(inputs.numpy())[0])


def tflite_interpreter(path: Path, threads: int | None = None):
    """The LiteRT (TFLite) interpreter of ``path`` on the CPU with ``threads`` threads (default ``ort_threads``,
    the same as ONNX Runtime's, so the two compare fairly), its tensors allocated for the converted batch size."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads or ort_threads())
    interpreter.allocate_tensors()
    return interpreter


def run_tflite(interpreter, inputs: np.ndarray) -> np.ndarray:
    """``interpreter``'s output for a batch ``inputs`` (its input resized to the batch when that differs)."""
    (given,) = interpreter.get_input_details()
    if tuple(given["shape"]) != inputs.shape:
        interpreter.resize_tensor_input(given["index"], list(inputs.shape))
        interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], np.ascontiguousarray(inputs, dtype=np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def write_tflite(network: nn.Module, inputs: torch.Tensor, path: Path) -> torch.Tensor:
    """A LiteRT (TFLite) flatbuffer of ``network`` with a dynamic batch axis, converted by litert-torch from
    ``torch.export``; returns the LiteRT interpreter's probabilities for ``inputs``, read back from disk."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
        import litert_torch
    except ImportError:
        raise TLBenchError(
            "--format tflite needs litert-torch: pip install 'tlbench[tflite]' (or pip install litert-torch)"
        ) from None
    example = inputs[:2] if len(inputs) > 1 else torch.cat([inputs, inputs])  # a batch of 2 keeps the axis dynamic
    batch = torch.export.Dim("batch", min=1, max=1024)
    # litert-torch draws a progress tree on stdout: export prints one summary of its own.
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        litert_torch.convert(network, (example.clone(),), dynamic_shapes=({0: batch},)).export(str(path))
    return torch.from_numpy(run_tflite(tflite_interpreter(path), inputs.numpy()))


class NamedInput(nn.Module):
    """``network`` with its input argument named ``images``: ``torch.export`` names a graph's inputs after the
    ``forward`` arguments, and every other format calls the input ``images``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)


def write_coreml(network: nn.Module, example: torch.Tensor, classes: list[str], path: Path) -> None:
    """A Core ML ML program classifier of ``network`` for one image (``example``'s shape, batch 1), converted by
    coremltools from ``torch.export`` in float32 and saved as the ``.mlpackage`` folder ``path``. Not run: Core
    ML predicts only on Apple systems (``COREML_UNCHECKED``)."""
    try:
        with redirect_stderr(io.StringIO()):  # its import warns about the prediction library missing on Linux
            import coremltools
    except ImportError:
        raise TLBenchError(
            "--format coreml needs coremltools: pip install 'tlbench[coreml]' (or pip install coremltools)"
        ) from None
    with warnings.catch_warnings(), redirect_stderr(io.StringIO()), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # "torch version not tested", renamed outputs; progress bars go to stderr
        program = torch.export.export(NamedInput(network).eval(), (example[:1].clone(),)).run_decompositions({})
        model = coremltools.convert(
            program,
            convert_to="mlprogram",
            classifier_config=coremltools.ClassifierConfig(list(classes)),
            compute_precision=coremltools.precision.FLOAT32,
            minimum_deployment_target=coremltools.target.iOS15,
        )
    model.save(str(path))


def write_torchscript(network: nn.Module, example: torch.Tensor, path: Path) -> torch.Tensor:
    """Trace, save, reload from disk and return the reloaded module's probabilities for ``example``."""
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(network, example), str(path))
        return torch.jit.load(str(path)).eval()(example)


def _staging_folder(destination: Path) -> Path:
    """An empty hidden folder beside ``destination``; one line, not a traceback, when that place is not writable."""
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    except OSError as error:
        raise TLBenchError(
            f"cannot write the bundle to {destination}: {destination.parent} is not a writable folder"
            f" ({error.strerror or error}); choose another --output"
        ) from None


def _publish(staging: Path, destination: Path) -> None:
    """Rename the finished bundle into place so that it survives a power cut once this returns.

    Every file gets the mode ``open()`` gives (safetensors writes owner-only files, ``mkdtemp`` an owner-only
    folder) and is fsynced before the rename, and so does every folder in it (the Core ML package is one), deepest
    first; the parent folder is fsynced after it, so the rename itself is on disk.
    """
    for entry in sorted(staging.rglob("*"), key=lambda path: len(path.parts), reverse=True):
        if entry.is_dir():
            entry.chmod(umask_mode(0o777))
            fsync_folder(entry)
        else:
            entry.chmod(umask_mode())
            fsync_file(entry)
    staging.chmod(umask_mode(0o777))
    fsync_folder(staging)
    os.rename(staging, destination)
    fsync_folder(destination.parent)


def write_int8(trained: TrainedModel, run_dir: Path, staging: Path) -> dict:
    """Quantise the staged ``model.onnx`` to ``model.int8.onnx``, calibrated on the run's training images, and
    return ``check_int8``'s report on its test images; one line when either set of images cannot be read, or when
    the int8 model fails the check."""
    metrics = read_metrics(run_dir)
    pre = trained.preprocessing
    calibration, _ = split_crops(run_dir, pre, "train", CALIBRATION_IMAGES)
    test_on = metrics.get("test_on", "test")
    test, labels = split_crops(run_dir, pre, test_on)
    if not len(calibration) or not len(test):
        missing = "training" if not len(calibration) else test_on
        raise TLBenchError(
            f"cannot quantise to int8: no {missing} image of {run_dir}/split.csv is readable under"
            f" {metrics.get('data_root')}; export where the run's data is"
        )
    quantize_int8(staging / BUNDLE_ONNX, staging / INT8_ONNX, network_input(calibration, pre).numpy(), INPUT)
    known = {name: index for index, name in enumerate(trained.classes)}
    report = check_int8(
        staging / BUNDLE_ONNX,
        staging / INT8_ONNX,
        network_input(test, pre).numpy(),
        [known.get(label, -1) for label in labels],
        ort_session,
        INPUT,
    )
    if report["refused"]:
        raise TLBenchError(f"int8 refused: {report['refused']}; nothing was written (export without --quantize)")
    return {**report, "calibration_images": len(calibration), "test_on": test_on}


def write_bundle(
    trained: TrainedModel,
    run_dir: Path,
    staging: Path,
    wanted: list[str],
    crops: torch.Tensor,
    described: str,
    quantize: str | None,
) -> dict:
    """Write the bundle's files to ``staging``, each checked against the PyTorch model on ``crops``; the parity
    report (with the int8 check's report under ``int8`` when quantised)."""
    from safetensors.torch import save_model

    inputs = network_input(crops, trained.preprocessing)
    expected = Predictor(trained, engine="torch").forward(
        inputs
    )  # the reference every exported form is checked against
    network = ProbabilityNetwork(trained.model).eval()
    save_model(trained.model, str(staging / BUNDLE_WEIGHTS))
    info = manifest(trained, run_dir)
    write_json(staging / BUNDLE_MANIFEST, info)
    reloaded = Predictor(load_bundle(staging), engine="torch").forward(inputs)
    differences = {"safetensors": max_abs_diff(expected, reloaded)}
    if "onnx" in wanted:
        differences["onnx"] = max_abs_diff(expected, write_onnx(network, inputs, staging / BUNDLE_ONNX))
    if "onnx-standalone" in wanted:
        differences["onnx-standalone"] = max_abs_diff(
            expected, write_standalone_onnx(trained, network, crops, staging / STANDALONE_ONNX)
        )
    if "openvino" in wanted:
        differences["openvino"] = max_abs_diff(expected, write_openvino(network, inputs, staging))
    if "tflite" in wanted:
        differences["tflite"] = max_abs_diff(expected, write_tflite(network, inputs, staging / TFLITE_FILE))
    if "coreml" in wanted:
        write_coreml(network, inputs, trained.classes, staging / COREML_PACKAGE)
    if "torchscript" in wanted:
        differences["torchscript"] = max_abs_diff(
            expected, write_torchscript(network, inputs, staging / TORCHSCRIPT_FILE)
        )
    failed = {name: diff for name, diff in differences.items() if not diff <= PARITY_TOLERANCE}
    if failed:
        detail = ", ".join(f"{name} {diff:.2e}" for name, diff in failed.items())
        raise TLBenchError(
            f"export parity check failed on {described}: max abs probability difference {detail}"
            f" > {PARITY_TOLERANCE:g}; nothing was written"
        )
    parity = {"inputs": described, "tolerance": PARITY_TOLERANCE, "max_abs_diff": differences}
    if "coreml" in wanted:
        parity["unchecked"] = {"coreml": COREML_UNCHECKED}
    if quantize:
        parity["int8"] = write_int8(trained, run_dir, staging)
    write_json(staging / BUNDLE_MANIFEST, {**info, "parity": parity})
    return parity


def export_bundle(
    run: str | Path,
    phase: str | None = None,
    formats: str = "safetensors",
    output: str | Path | None = None,
    quantize: str | None = None,
    push: str | None = None,
) -> tuple[Path, dict]:
    """Write the bundle (or, for ``formats="hf"``, the timm folder) of ``run``'s ``phase`` to ``output``; returns
    its folder and the parity report. ``quantize="int8"`` adds ``model.int8.onnx`` (and ``model.onnx``, which it
    is quantised from and checked against); ``push`` uploads the hf folder to that Hub repository."""
    from safetensors import SafetensorError

    run_dir = Path(run).expanduser()
    read_metrics(run_dir)  # one line when it is no run directory: export needs its metrics and test images
    wanted = parse_formats(formats)
    quantize = check_quantization(quantize)
    hf = wanted == ["hf"]
    if hf and quantize:
        raise TLBenchError("--quantize int8 makes an ONNX graph; leave out --quantize for --format hf")
    if push and not hf:
        raise TLBenchError("--push uploads a timm folder; add --format hf")
    if quantize and "onnx" not in wanted:  # the fp32 graph is what int8 is quantised from and checked against
        wanted = parse_formats(f"{formats},onnx")
    trained = load_trained(run_dir, phase)
    default = f"hf_{trained.phase}" if hf else f"export_{trained.phase}"
    destination = Path(output).expanduser() if output else run_dir / default
    if destination.exists():
        raise TLBenchError(f"{destination} already exists; remove it or choose another --output")
    crops, described = parity_batch(run_dir, trained.preprocessing)
    staging = _staging_folder(destination)
    try:
        if hf:
            inputs = network_input(crops, trained.preprocessing)
            differences = write_hf_folder(trained, run_dir, staging, inputs, push)
            parity = {"inputs": described, "tolerance": PARITY_TOLERANCE, "max_abs_diff": differences}
        else:
            parity = write_bundle(trained, run_dir, staging, wanted, crops, described, quantize)
        _publish(staging, destination)
    except (OSError, SafetensorError) as error:  # disk full, a read-only mount, the folder taken away
        shutil.rmtree(staging, ignore_errors=True)
        reason = getattr(error, "strerror", None) or error
        raise TLBenchError(
            f"could not write the bundle {destination}: {reason}; nothing was written"
            " (free disk space or choose another --output)"
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if push:
        parity["pushed"] = push_folder(destination, push)
    return destination, parity
