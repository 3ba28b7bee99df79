"""Inference starts without Lightning: classify, serve, export, check and ``tlbench.load(...).predict`` run a plain
``Network`` (models/network.py), so none of them imports pytorch_lightning, torchmetrics or TensorBoard
(docs/speed.md "Start-up"); their ``--help`` imports not even torch. Only a fresh interpreter can tell what a
command imports, so one child process runs them all, in turn, and reports what each step brought in."""

import json
import subprocess
import sys

from tests.conftest import make_dataset, run_cli, tlbench_env

# Modules only training needs; an inference path that imports one of them has regressed.
TRAINING_ONLY = ("pytorch_lightning", "lightning", "torchmetrics", "tensorboard")

CHILD = """
import json, sys
from pathlib import Path

run, data, out = (Path(arg) for arg in sys.argv[1:4])
image = next(iter(sorted(data.rglob("*.png"))))
steps = {}


def step(name, action):
    code = action()
    assert code in (0, None), f"{name} exited {code}"
    steps[name] = sorted(module for module in TRAINING_ONLY if module in sys.modules)


TRAINING_ONLY = %r
import tlbench
from tlbench.__main__ import main

step("import tlbench", lambda: None)
torch_for_help = []
for command in ("classify", "serve", "export", "check", "explain"):
    try:
        main([command, "--help"])
    except SystemExit as exit:
        assert exit.code in (0, None), f"{command} --help exited {exit.code}"
    if "torch" in sys.modules and not torch_for_help:
        torch_for_help.append(command)
steps["--help imports torch"] = torch_for_help
def predict(model):
    assert tlbench.load(model).predict([image])[0].label.startswith("class_")


step("tlbench.load().predict", lambda: predict(run))
step("classify", lambda: main(["classify", str(run), str(image)]))
bundle = out / "bundle"
step("export", lambda: main(["export", str(run), "--format", "safetensors,onnx", "--output", str(bundle)]))
step("tlbench.load(bundle).predict", lambda: predict(bundle))


def serve():
    from starlette.testclient import TestClient

    import tlbench.commands.serve  # noqa: F401  (what the command imports before uvicorn runs the app it builds)
    import uvicorn  # noqa: F401
    from tlbench.models.loading import load_trained
    from tlbench.serve.app import ServeSettings, create_app
    from tlbench.serve.connections import uvicorn_config  # noqa: F401

    app = create_app(load_trained(str(bundle)), ServeSettings())
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        with open(image, "rb") as upload:
            assert client.post("/predict", files={"file": upload}).status_code == 200


step("serve", serve)
step("check", lambda: main(
    ["check", "--data.root", str(data), "--model.backbone", "efficientnet_lite0", "--per_class", "1",
     "--output", str(out / "check")]
))
print(json.dumps(steps))
""" % (TRAINING_ONLY,)


def test_inference_commands_never_import_lightning(tiny_run, tmp_path):
    data = make_dataset(tmp_path / "images")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tiny_run), str(data), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=tlbench_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    steps = json.loads(result.stdout.strip().splitlines()[-1])
    assert list(steps) == [
        "import tlbench",
        "--help imports torch",
        "tlbench.load().predict",
        "classify",
        "export",
        "tlbench.load(bundle).predict",
        "serve",
        "check",
    ]
    imported = {name: modules for name, modules in steps.items() if modules}
    assert not imported, f"imported by (first at): {imported}"
    assert (tmp_path / "bundle" / "model.onnx").is_file() and (tmp_path / "check" / "check.csv").is_file()


def test_classify_of_a_checkpoint_classified_before_imports_no_torch(tiny_run, tmp_path, monkeypatch):
    """The first classify of a checkpoint checks its ONNX graph against torch and keeps it; the next, in a fresh
    interpreter as a user runs it, must answer the same without importing torch, torchvision or timm."""
    monkeypatch.setenv("TLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    image = str(next(iter(sorted((tiny_run.parents[2] / "tiny").rglob("*.png")))))
    first = run_cli("classify", str(tiny_run), image, cwd=tmp_path)
    child = (
        "import sys; from tlbench.__main__ import main; code = main(sys.argv[1:]);"
        "print(sorted(name for name in ('torch', 'torchvision', 'timm') if name in sys.modules)); sys.exit(code)"
    )
    second = subprocess.run(
        [sys.executable, "-c", child, "classify", str(tiny_run), image],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=tlbench_env({"TLBENCH_CACHE_DIR": str(tmp_path / "cache")}),
    )
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert second.stdout == first.stdout + "[]\n", second.stdout
