"""``tlbench export``: bundle contents, parity of every format, atomicity, and loading without unpickling."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tlbench
import tlbench.export
import tlbench.hub
import tlbench.quantize
from tests.conftest import REPO, make_dataset, run_cli
from tlbench.__main__ import main
from tlbench.data.images import load_rgb
from tlbench.errors import TLBenchError
from tlbench.export import PARITY_TOLERANCE, STANDALONE_ONNX, export_bundle
from tlbench.models.heads import ClassifierHead
from tlbench.models.inference import Predictor
from tlbench.models.loading import load_trained
from tlbench.quantize import INT8_ONNX, int8_verdict


def test_cli_writes_a_bundle_whose_every_format_matches_pytorch(tiny_run, tmp_path):
    bundle = tmp_path / "bundle"
    result = run_cli("export", str(tiny_run), "--format", "onnx,torchscript", "--output", str(bundle), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "parity on 3 test images" in result.stdout
    assert sorted(p.name for p in bundle.iterdir()) == [
        "model.json",
        "model.onnx",
        "model.torchscript.pt",
        "weights.safetensors",
    ]
    manifest = json.loads((bundle / "model.json").read_text())
    assert manifest["format_version"] == 1 and manifest["backbone"] == "cnn1" and manifest["phase"] == "finetune"
    assert manifest["classes"] == ["class_0", "class_1", "class_2"]
    assert manifest["model"]["head_hidden"] == 16 and manifest["preprocessing"]["resize_size"] == 36
    assert manifest["metrics"]["test_n"] == 3
    assert set(manifest["parity"]["max_abs_diff"]) == {"safetensors", "onnx", "torchscript"}
    assert max(manifest["parity"]["max_abs_diff"].values()) <= PARITY_TOLERANCE

    # The ONNX graph, run independently here, agrees with the model loaded back from the bundle.
    import onnxruntime

    run, loaded = load_trained(tiny_run), load_trained(bundle)
    images = [load_rgb(p) for p in sorted((tiny_run.parents[2] / "tiny").glob("*/*.png"))[::4]]
    batch = Predictor(loaded).tensor(images)
    expected = Predictor(run, engine="torch").forward(batch)
    assert torch.equal(Predictor(loaded, engine="torch").forward(batch), expected)
    # Through ONNX Runtime a bundle runs its own model.onnx, checked on the first batch.
    through_ort = Predictor(loaded, engine="onnxruntime")
    assert through_ort.engine.graph == bundle / "model.onnx"
    assert (through_ort.forward(batch) - expected).abs().max() <= PARITY_TOLERANCE
    assert through_ort.engine.name == "onnxruntime"
    session = onnxruntime.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"images": batch.numpy()})[0] - expected.numpy()).max() <= PARITY_TOLERANCE
    assert loaded.classes == run.classes and loaded.preprocessing == run.preprocessing


def test_bundle_loads_without_unpickling(tiny_run, tmp_path, monkeypatch):
    bundle, _ = export_bundle(tiny_run, phase="head", output=tmp_path / "head")

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load called while loading a bundle")

    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = load_trained(bundle)
    assert loaded.phase == "head" and loaded.source == bundle
    with pytest.raises(TLBenchError, match="holds the 'head' phase"):
        load_trained(bundle, phase="finetune")


def test_failed_parity_check_leaves_no_bundle(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(tlbench.export, "PARITY_TOLERANCE", -1.0)  # even identical outputs now "differ"
    with pytest.raises(TLBenchError, match="parity check failed"):
        export_bundle(tiny_run, formats="torchscript", output=tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_efficientnet_lite0_run_exports_with_parity(shared_data, tmp_path):
    """A real pretrained network: depthwise convolutions, BatchNorm and SiLU through ONNX and TorchScript."""
    fit = run_cli(
        "fit",
        "--config",
        "leaves_efficientnet_lite0.yaml",
        "--data.root",
        str(shared_data / "leaves3"),
        "--model.head_epochs",
        "1",
        "--model.finetune_epochs",
        "0",
        "--data.num_workers",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        cwd=tmp_path,
    )
    assert fit.returncode == 0, fit.stderr[-2000:]
    run = next((tmp_path / "lightning_logs").glob("*/version_0"))
    bundle, parity = export_bundle(run, formats="onnx,torchscript")
    print("efficientnet_lite0 parity", parity)
    assert parity["inputs"].endswith("test images") and set(parity["max_abs_diff"]) == {
        "safetensors",
        "onnx",
        "torchscript",
    }
    assert max(parity["max_abs_diff"].values()) <= PARITY_TOLERANCE
    assert load_trained(bundle).backbone == "efficientnet_lite0"


SNIPPET = REPO / "docs" / "classify_onnx.py"


def venv_with_only(packages: list[str], folder: Path) -> Path:
    """A venv whose Python sees ``packages`` (and their bundled ``.libs``) and nothing else: no tlbench, no torch.

    A ``.pth`` file adds one folder of links to the packages, never the whole site-packages they live in."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    links = folder / "deps"
    links.mkdir()
    for name in packages:
        package = Path(__import__(name).__file__).parent
        for source in [package, *package.parent.glob(f"{name.lower()}*.libs")]:
            (links / source.name).symlink_to(source)
    site_packages = next(folder.glob("lib/python3*/site-packages"))
    (site_packages / "deps.pth").write_text(f"{links}\n")
    return folder / "bin" / "python"


def test_standalone_onnx_classifies_with_onnxruntime_pillow_numpy_alone(tiny_run, tmp_path):
    """docs/deployment.md's snippet, in a Python that cannot import tlbench or torch, gives tlbench's predictions."""
    bundle, parity = export_bundle(tiny_run, formats="onnx-standalone", output=tmp_path / "bundle")
    assert parity["max_abs_diff"]["onnx-standalone"] <= PARITY_TOLERANCE
    import onnx

    metadata = {prop.key: prop.value for prop in onnx.load(str(bundle / STANDALONE_ONNX)).metadata_props}
    assert json.loads(metadata["classes"]) == ["class_0", "class_1", "class_2"]
    assert (metadata["input_size"], metadata["resize_size"], metadata["interpolation"]) == ("32", "36", "bilinear")
    # The snippet in the docs is the tested file, line for line.
    page = (REPO / "docs" / "deployment.md").read_text()
    assert SNIPPET.read_text() in page, "docs/deployment.md's snippet and docs/classify_onnx.py differ"

    python = venv_with_only(["numpy", "onnxruntime", "PIL"], tmp_path / "venv")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    for module in ("tlbench", "torch"):
        probe = subprocess.run([python, "-c", f"import {module}"], cwd=tmp_path, env=env, capture_output=True)
        assert probe.returncode != 0, f"{module} is importable in the isolated venv"
    # Square, wide and tall images, so the resize's rounding and the crop's offsets are exercised: 40x90 resizes to
    # 36x81, a crop offset of 24.5 that rounds half to even (24), where rounding up or down would differ.
    images = sorted((tiny_run.parents[2] / "tiny").glob("*/*.png"))[::3]
    for i, (width, height) in enumerate([(57, 41), (41, 63), (90, 37), (40, 90)]):
        Image.open(images[i]).resize((width, height)).save(tmp_path / f"odd_{i}.png")
    images += sorted(tmp_path.glob("odd_*.png"))
    result = subprocess.run(
        [python, str(SNIPPET), str(bundle / STANDALONE_ONNX), *map(str, images)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    expected = tlbench.load(tiny_run, engine="torch").predict(images)
    assert [row[1] for row in rows] == [p.label for p in expected]
    # Same pixels give the same probability up to the printed 6 decimals (5e-7) and float noise; a crop one pixel
    # off (floor instead of torchvision's rounding of the offset) already differs by 6e-6 to 8e-5 here.
    assert max(abs(float(row[2]) - p.probability) for row, p in zip(rows, expected)) <= 2e-6


def test_cli_quantize_int8_writes_a_checked_int8_graph(tiny_run, tmp_path):
    bundle = tmp_path / "bundle"
    result = run_cli("export", str(tiny_run), "--quantize", "int8", "--output", str(bundle), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "int8: agrees with fp32 on 100.0% of 3 test images" in result.stdout
    assert "calibrated on 21 training images" in result.stdout
    assert {"model.onnx", INT8_ONNX} <= {p.name for p in bundle.iterdir()}
    check = json.loads((bundle / "model.json").read_text())["parity"]["int8"]
    assert check["refused"] is None and check["n"] == 3 and check["mcnemar_p"] == 1.0
    import onnx

    # Really quantised: integer weights and quantise/dequantise pairs, not a copy of the fp32 graph.
    graph = onnx.load(str(bundle / INT8_ONNX)).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)


def test_int8_that_disagrees_with_fp32_is_refused_and_nothing_written(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(tlbench.quantize, "MIN_AGREEMENT", 1.01)  # even full agreement now falls short
    with pytest.raises(TLBenchError, match=r"int8 refused: it agrees with fp32 on 100.0% of 3 test images"):
        export_bundle(tiny_run, quantize="int8", output=tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TLBenchError, match="unknown --quantize 'int4'"):
        export_bundle(tiny_run, quantize="int4", output=tmp_path / "bundle")


def test_int8_verdict_needs_agreement_and_no_significant_mcnemar_difference():
    labels = np.zeros(1000, dtype=int)
    fp32 = labels.copy()
    # 99% agreement, but every disagreement is int8 wrong where fp32 was right: McNemar p = 2 / 2**10.
    one_sided = fp32.copy()
    one_sided[:10] = 1
    verdict = int8_verdict(fp32, one_sided, labels)
    assert verdict["agreement"] == 0.99 and verdict["mcnemar_b"] == 10 and verdict["mcnemar_c"] == 0
    assert "McNemar p=0.002" in verdict["refused"] and "agrees" not in verdict["refused"]
    # The same 99% agreement with the disagreements balanced (5 won, 5 lost) is kept.
    balanced_fp32, balanced_int8 = fp32.copy(), one_sided.copy()
    balanced_fp32[5:10], balanced_int8[5:10] = 1, 0
    assert int8_verdict(balanced_fp32, balanced_int8, labels)["refused"] is None
    # 98% agreement is refused however the disagreements fall.
    assert (
        "98.0% of 1000"
        in int8_verdict(np.r_[np.ones(10), np.zeros(990)], np.r_[np.zeros(10), np.ones(10), np.zeros(980)], labels)[
            "refused"
        ]
    )


@pytest.fixture(scope="module")
def linear_timm_run(tmp_path_factory) -> Path:
    """A run whose model is exactly a timm model: timm's tiny test EfficientNet with one Linear head."""
    root = tmp_path_factory.mktemp("linear_timm")
    run = tlbench.fit(
        make_dataset(root / "tiny"),
        backbone="test_efficientnet",
        output=root,
        pretrained=False,
        input_size=32,
        head_hidden=0,
        head_epochs=1,
        finetune_epochs=1,
        unfreeze_blocks=-1,
        batch_size=8,
        num_workers=0,
        trainer={"enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu"},
    )
    return run.dir


def test_cli_format_hf_round_trips_through_timm_and_tlbench(linear_timm_run, tmp_path):
    import timm

    folder = tmp_path / "hf"
    result = run_cli("export", str(linear_timm_run), "--format", "hf", "--output", str(folder), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_efficientnet" and config["num_classes"] == 3
    assert config["label_names"] == ["class_0", "class_1", "class_2"]
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    from safetensors.torch import load_file

    assert set(load_file(str(folder / "model.safetensors"))) == set(
        timm.create_model("test_efficientnet", num_classes=3).state_dict()
    )
    metrics = tlbench.Run(linear_timm_run).metrics
    finetune = metrics["phases"]["finetune"]
    card = (folder / "README.md").read_text()
    assert f"Test accuracy: {finetune['test_acc']:.3f} on 3 test images" in card
    assert f"[{finetune['test_acc_ci95'][0]:.3f}, {finetune['test_acc_ci95'][1]:.3f}]" in card
    assert metrics["layout"] in card and tlbench.hub.split_hash(linear_timm_run) in card

    images = sorted((linear_timm_run.parents[2] / "tiny").glob("*/*.png"))[::3]
    run, loaded = tlbench.load(linear_timm_run, engine="torch"), tlbench.load(folder, engine="torch")
    expected = run.predict(images)
    assert loaded.classes == run.classes and loaded.trained.preprocessing == run.trained.preprocessing
    assert [p.label for p in loaded.predict(images)] == [p.label for p in expected]
    assert max(abs(a.probability - b.probability) for a, b in zip(loaded.predict(images), expected)) <= 1e-5
    # timm alone, with the run's preprocessing (tlbench's), gives the run's probabilities.
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    batch = run.predictor.tensor([load_rgb(p) for p in images])
    with torch.no_grad():
        probabilities = model(batch).softmax(dim=1)
    assert (probabilities - run.predictor.forward(batch)).abs().max() <= PARITY_TOLERANCE


def test_format_hf_refuses_models_timm_cannot_represent(tiny_run, linear_timm_run, tmp_path, monkeypatch):
    with pytest.raises(TLBenchError, match="cnn1 is tlbench's own baseline, not a timm architecture"):
        export_bundle(tiny_run, formats="hf", output=tmp_path / "baseline")
    trained = load_trained(linear_timm_run)
    trained.model.head = ClassifierHead(trained.model.backbone.num_features, 3, hidden=16)
    monkeypatch.setattr(tlbench.export, "load_trained", lambda *args: trained)
    with pytest.raises(TLBenchError, match="head is Linear-ReLU-Dropout-Linear, which timm's single Linear"):
        export_bundle(linear_timm_run, formats="hf", output=tmp_path / "hidden")
    for formats, quantize, push, message in [
        ("hf,onnx", None, None, "export it alone"),
        ("hf", "int8", None, "leave out --quantize for --format hf"),
        ("onnx", None, "org/name", "add --format hf"),
    ]:
        with pytest.raises(TLBenchError, match=message):
            export_bundle(linear_timm_run, formats=formats, quantize=quantize, push=push, output=tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_failed_push_is_one_line_and_keeps_the_folder(linear_timm_run, tmp_path, monkeypatch):
    """The Hub cannot be reached from here: only the failure path of --push is tested."""
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise OSError("Cannot reach https://huggingface.co")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", unreachable)
    with pytest.raises(TLBenchError, match=r"could not push .* to org/name: Cannot reach .* hf upload org/name"):
        export_bundle(linear_timm_run, formats="hf", push="org/name", output=tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_openvino_ir_matches_pytorch_and_is_refused_without_openvino(tiny_run, tmp_path, monkeypatch):
    import openvino

    bundle, parity = export_bundle(tiny_run, formats="openvino", output=tmp_path / "bundle")
    assert {"model.openvino.xml", "model.openvino.bin"} <= {p.name for p in bundle.iterdir()}
    assert "model.onnx" not in {p.name for p in bundle.iterdir()}  # its temporary source is not left behind
    assert parity["max_abs_diff"]["openvino"] <= PARITY_TOLERANCE
    # The IR, run independently by OpenVINO in float32, agrees with the run's model.
    images = [load_rgb(p) for p in sorted((tiny_run.parents[2] / "tiny").glob("*/*.png"))[::4]]
    reference = Predictor(load_trained(tiny_run), engine="torch")
    batch = reference.tensor(images)
    compiled = openvino.Core().compile_model(str(bundle / "model.openvino.xml"), "CPU", tlbench.export.OPENVINO_CONFIG)
    assert np.abs(compiled(batch.numpy())[0] - reference.forward(batch).numpy()).max() <= PARITY_TOLERANCE

    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the extra were not installed
    with pytest.raises(TLBenchError, match=r"--format openvino needs OpenVINO: pip install 'tlbench\[openvino\]'"):
        export_bundle(tiny_run, formats="openvino", output=tmp_path / "without")
    assert not (tmp_path / "without").exists()


@pytest.mark.parametrize("format, module", [("tflite", "litert_torch"), ("coreml", "coremltools")])
def test_an_edge_format_is_refused_in_one_line_without_its_extra(
    tiny_run, tmp_path, monkeypatch, capsys, format, module
):
    monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed
    assert main(["export", str(tiny_run), "--format", format, "--output", str(tmp_path / "without")]) == 2
    package = module.replace("_", "-")
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --format {format} needs {package}: pip install 'tlbench[{format}]' (or pip install {package})"
    ]
    assert not list(tmp_path.iterdir())  # neither the bundle nor its staging folder


def test_tflite_matches_pytorch_through_the_litert_interpreter_at_any_batch_size(tiny_run, tmp_path):
    pytest.importorskip(
        "litert_torch",
        reason="the tflite extra is not installed (pip install 'tlbench[tflite]'; it stays out of dev: litert-torch"
        " brings JAX, transformers and 1 GB, and pins typing-extensions<4.13, which downgrades pydantic)",
    )
    bundle, parity = export_bundle(tiny_run, formats="tflite", output=tmp_path / "bundle")
    assert sorted(p.name for p in bundle.iterdir()) == ["model.json", "model.tflite", "weights.safetensors"]
    assert parity["max_abs_diff"]["tflite"] <= PARITY_TOLERANCE
    # Read back by a fresh interpreter at batch sizes other than the check's, it agrees with the run's model.
    images = [load_rgb(p) for p in sorted((tiny_run.parents[2] / "tiny").glob("*/*.png"))[::3]]
    reference = Predictor(load_trained(tiny_run), engine="torch")
    batch = reference.tensor(images)
    interpreter = tlbench.export.tflite_interpreter(bundle / "model.tflite", threads=1)
    for size in (1, len(batch)):
        tflite = tlbench.export.run_tflite(interpreter, batch[:size].numpy())
        assert np.abs(tflite - reference.forward(batch[:size]).numpy()).max() <= PARITY_TOLERANCE


def test_coreml_package_is_written_with_its_input_outputs_and_class_labels_but_not_run(tiny_run, tmp_path):
    """Core ML cannot predict on Linux: the package is converted, saved and its specification read back; the
    parity report says it was not checked."""
    coremltools = pytest.importorskip("coremltools", reason="the coreml extra is not installed")
    bundle, parity = export_bundle(tiny_run, formats="coreml", output=tmp_path / "bundle")
    assert parity["unchecked"] == {"coreml": tlbench.export.COREML_UNCHECKED}
    assert set(parity["max_abs_diff"]) == {"safetensors"}
    assert json.loads((bundle / "model.json").read_text())["parity"]["unchecked"] == parity["unchecked"]
    package = bundle / "model.mlpackage"
    assert (package / "Manifest.json").is_file() and stat.S_IMODE(package.stat().st_mode) & 0o500 == 0o500
    spec = coremltools.models.MLModel(str(package), skip_model_load=True).get_spec()
    (given,) = spec.description.input
    assert given.name == "images" and list(given.type.multiArrayType.shape) == [1, 3, 32, 32]
    assert given.type.multiArrayType.dataType == coremltools.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    outputs = {output.name: output.type.WhichOneof("Type") for output in spec.description.output}
    assert outputs == {"classLabel": "stringType", "classLabel_probs": "dictionaryType"}
    main_function = spec.mlProgram.functions["main"]
    (classify,) = [
        op for op in main_function.block_specializations[main_function.opset].operations if op.type == "classify"
    ]
    labels = [
        value.immediateValue.tensor.strings.values[0]
        for value in classify.inputs["classes"].arguments[0].value.immediateValue.list.values
    ]
    assert labels == ["class_0", "class_1", "class_2"]
