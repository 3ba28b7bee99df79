"""``export --format hf``: a run as a timm-compatible, Hugging Face Hub-ready folder (``models.loading`` reads it back).

The folder is what ``timm.models.save_for_hf`` writes (``config.json`` with the architecture, ``num_classes``,
``label_names`` and a ``pretrained_cfg`` holding the run's preprocessing; ``model.safetensors`` with timm's own
state-dict keys) plus a ``README.md`` model card with the run's test accuracy and interval, data layout and split
hash. ``timm.create_model("local-dir:FOLDER", pretrained=True)`` builds the trained classifier from it (without
``pretrained=True`` timm builds the architecture only, with random weights), and ``tlbench.load(FOLDER)`` loads it
as any other trained model.

This only works when the tlbench model *is* a timm model: a timm backbone whose own head (timm's pooling and
classifier) computes what tlbench's pooled features and head do. tlbench's head is one Linear only when fitted
with ``--model.head_hidden 0`` (a linear probe; ``ClassifierHead``): that Linear becomes timm's classifier. The
default Linear-ReLU-Dropout-Linear head has no place in timm's classifier, and the baselines (``cnn1``, ``cnn6``)
are tlbench's own architectures, unknown to timm: both are refused in one line. Whatever passes is checked: the
timm model's probabilities must match tlbench's on the run's test images within ``PARITY_TOLERANCE`` (a timm head
that does more than average-pool, such as MobileNetV3's ``conv_head``, fails it), or nothing is written.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from tlbench.errors import TLBenchError
from tlbench.models.baselines import BASELINES
from tlbench.models.engine import PARITY_TOLERANCE
from tlbench.models.loading import (
    HF_CONFIG,
    TrainedModel,
)
from tlbench.rundir import read_metrics

MODEL_CARD = "README.md"


def timm_classifier(trained: TrainedModel) -> nn.Module:
    """The run's network as a plain timm model: its backbone with tlbench's single Linear head as timm's
    classifier; one line when the run's model cannot be one."""
    backbone = trained.model.backbone.model
    architecture = backbone.pretrained_cfg.get("architecture", trained.backbone)
    if architecture in BASELINES:
        raise TLBenchError(
            f"--format hf: {architecture} is tlbench's own baseline, not a timm architecture; export a run with a"
            " timm backbone, or use the default bundle format"
        )
    linears = [layer for layer in trained.model.head if isinstance(layer, nn.Linear)]
    if len(linears) != 1:
        layers = "-".join(type(layer).__name__ for layer in trained.model.head)
        raise TLBenchError(
            f"--format hf: this run's head is {layers}, which timm's single Linear classifier cannot represent;"
            " fit with --model.head_hidden 0 for a timm-compatible model, or use the default bundle format"
        )
    model = copy.deepcopy(backbone).to(memory_format=torch.contiguous_format).eval()
    model.reset_classifier(len(trained.classes))
    linear = linears[0]
    with torch.no_grad():
        model.get_classifier().weight.copy_(linear.weight)
        model.get_classifier().bias.copy_(linear.bias)
    return model


def split_hash(run_dir: Path) -> str | None:
    """SHA-256 of the run's ``split.csv``: every image's path, label, split and content hash, so equal hashes
    mean the same images were trained and tested on."""
    split = run_dir / "split.csv"
    return hashlib.sha256(split.read_bytes()).hexdigest() if split.is_file() else None


def model_card(trained: TrainedModel, run_dir: Path, architecture: str, repo: str | None) -> str:
    """The folder's README.md: what the model is, how it scored on the run's test split, and how to load it."""
    metrics = read_metrics(run_dir)
    phase = metrics.get("phases", {}).get(trained.phase, {})
    accuracy, interval = phase.get("test_acc"), phase.get("test_acc_ci95")
    scored = (
        f"{accuracy:.3f} on {phase.get('test_n')} {metrics.get('test_on', 'test')} images"
        + (
            f", 95% {phase.get('test_acc_ci_method', '')} interval [{interval[0]:.3f}, {interval[1]:.3f}]"
            if interval
            else ""
        )
        if accuracy is not None
        else "not recorded"
    )
    pre = trained.preprocessing
    name = repo or "FOLDER"
    source = f"hf-hub:{repo}" if repo else "local-dir:FOLDER"
    lines = [
        "---",
        "library_name: timm",
        "tags: [image-classification, timm, tlbench]",
        "---",
        f"# {metrics.get('dataset', 'tlbench')} classifier ({architecture})",
        "",
        f"`{architecture}` trained by tlbench (phase `{trained.phase}`, starting weights:"
        f" {trained.model.weights_source}) to classify {len(trained.classes)} classes: {', '.join(trained.classes)}.",
        "",
        f"- Test accuracy: {scored}.",
        f"- Data: {metrics.get('dataset')} ({metrics.get('layout', 'layout not recorded')});"
        f" split sizes {json.dumps(metrics.get('split_sizes', {}))}.",
        f"- Split hash (SHA-256 of the run's split.csv): `{split_hash(run_dir)}`.",
        f"- Preprocessing: resize the short side to {pre.resize_size} ({pre.interpolation}), centre-crop"
        f" {pre.input_size}, normalise with mean {list(pre.mean)} and std {list(pre.std)} (timm's data config reads"
        " it from config.json).",
        "",
        "```python",
        "import timm",
        f'model = timm.create_model("{source}", pretrained=True).eval()',
        "config = timm.data.resolve_data_config({}, model=model)",
        "transform = timm.data.create_transform(**config)",
        "# or: import tlbench; tlbench.load(FOLDER).predict([...])",
        "```",
        "",
        f"Exported from `{run_dir}` by `tlbench export --format hf`{f' and pushed to {name}' if repo else ''}.",
    ]
    return "\n".join(lines) + "\n"


def write_hf_folder(
    trained: TrainedModel, run_dir: Path, staging: Path, inputs: torch.Tensor, repo: str | None
) -> dict:
    """Write config.json, model.safetensors and README.md to ``staging``; return the parity report of timm's
    model, built back from the folder through ``local-dir:``, against tlbench's on ``inputs``."""
    import timm
    from timm.models import save_for_hf

    model = timm_classifier(trained)
    pre = trained.preprocessing
    data_config = {
        "input_size": (3, pre.input_size, pre.input_size),
        "interpolation": pre.interpolation,
        "mean": tuple(pre.mean),
        "std": tuple(pre.std),
        "crop_pct": pre.crop_pct,
    }
    tlbench_info = {"phase": trained.phase, "backbone": trained.backbone, "source_checkpoint": str(trained.source)}
    save_for_hf(
        model,
        str(staging),
        model_config={"label_names": list(trained.classes), "tlbench": tlbench_info},
        safe_serialization=True,
        data_config=data_config,
    )
    architecture = json.loads((staging / HF_CONFIG).read_text())["architecture"]
    (staging / MODEL_CARD).write_text(model_card(trained, run_dir, architecture, repo))
    with torch.no_grad():
        expected = trained.model(inputs).softmax(dim=1)
        rebuilt = timm.create_model(f"local-dir:{staging}", pretrained=True).eval()
        difference = float((rebuilt(inputs).softmax(dim=1) - expected).abs().max())
    if not difference <= PARITY_TOLERANCE:
        raise TLBenchError(
            f"--format hf: timm's {architecture} built from the folder differs from the run's model by"
            f" {difference:.2e} > {PARITY_TOLERANCE:g} (its head does more than tlbench's pooling and Linear);"
            " nothing was written: use the default bundle format (leave out --format hf)"
        )
    return {"hf": difference}


def push(folder: Path, repo: str) -> str:
    """Upload ``folder`` to the Hub model repository ``repo`` (created if missing); its URL. Untested here (no
    network): any failure is one line, and the folder stays for a later ``hf upload``."""
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo, exist_ok=True)
        return str(api.upload_folder(repo_id=repo, folder_path=str(folder)))
    except Exception as error:  # network, authentication and Hub errors come in many types
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise TLBenchError(
            f"could not push {folder} to {repo}: {detail}; the folder is written, upload it later with"
            f" hf upload {repo} {folder}"
        ) from None
