"""``python -m tlbench check``: ImageNet's view of a dataset and the head-only vs fine-tune advice."""

from __future__ import annotations

import pandas as pd
import pytest
from timm.data import ImageNetInfo

from tests.conftest import run_cli
from tlbench.check import config_values
from tlbench.commands import run_command
from tlbench.commands.check import check
from tlbench.errors import TLBenchError

# ImageNet-1k bird classes: cock..jay, partridge..black swan (ex. mammals), white stork..red-breasted merganser.
BIRD_INDICES = [*range(7, 25), *range(80, 101), *range(127, 147)]


def test_check_on_tiny_data_writes_csv_sheet_and_advice(tiny_dataset, tmp_path):
    result = run_cli(
        "check",
        "--data.root",
        str(tiny_dataset),
        "--model.backbone",
        "efficientnet_lite0",
        "--per_class",
        "2",
        "--top_k",
        "3",
        "--output",
        "out",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "out" / "check.csv")
    assert len(table) == 6 and table.label.value_counts().to_dict() == {"class_0": 2, "class_1": 2, "class_2": 2}
    assert {"top1_label", "top1_prob", "top3_label", "top3_prob"} <= set(table.columns) and "top4_label" not in table
    assert (table.top1_prob >= table.top2_prob).all() and table.top1_prob.le(1).all()
    assert (tmp_path / "out" / "contact_sheet.png").stat().st_size > 0
    # Noise patches are nothing ImageNet knows: low confidence, so the "different domain" advice.
    assert "recommendation: fine-tune more blocks" in result.stdout and "different from ImageNet" in result.stdout


def test_config_values_follow_shipped_includes_and_run_configs(tmp_path):
    assert config_values("leaves_efficientnet_lite0") == ("data/leaves", "efficientnet_lite0")
    run_config = tmp_path / "config.yaml"
    run_config.write_text("model:\n  backbone: vgg16\ndata:\n  root: /x/y\n")
    assert config_values(str(run_config)) == ("/x/y", "vgg16")


def test_check_reads_the_fit_config_given_as_config(tmp_path):
    """``--config`` names a fit config (jsonargparse would otherwise take it as check's own settings and drop it)."""
    config = tmp_path / "fit.yaml"
    config.write_text(f"data:\n  root: {tmp_path / 'from_the_config'}\nmodel:\n  backbone: efficientnet_lite0\n")
    with pytest.raises(TLBenchError, match="from_the_config"):
        run_command(check, ["--config", str(config)])


def test_check_refuses_a_backbone_without_imagenet_weights(tiny_dataset, tmp_path):
    result = run_cli("check", "--data.root", str(tiny_dataset), "--model.backbone", "cnn1", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "ImageNet-1k weights" in result.stderr.strip().splitlines()[-1]


def test_check_sees_birds_in_birds10_and_advises_differently_for_leaves(shared_data, tmp_path):
    birds = run_cli(
        "check",
        "--config",
        "birds_efficientnet_lite0.yaml",
        "--data.root",
        str(shared_data / "birds10"),
        "--output",
        "birds",
        cwd=tmp_path,
    )
    assert birds.returncode == 0, birds.stderr[-3000:]
    info = ImageNetInfo()
    bird_labels = {info.index_to_description(i) for i in BIRD_INDICES}
    table = pd.read_csv(tmp_path / "birds" / "check.csv")
    top5 = table[[f"top{r}_label" for r in range(1, 6)]]
    has_bird = top5.apply(lambda row: bool(set(row) & bird_labels), axis=1)
    assert len(table) == 20 and has_bird.mean() >= 0.8, table.top1_label.tolist()
    assert "recommendation: head only" in birds.stdout and "reason: data is small" in birds.stdout

    leaves = run_cli(
        "check", "--data.root", str(shared_data / "leaves3"), "--per_class", "1", "--output", "leaves", cwd=tmp_path
    )
    assert leaves.returncode == 0, leaves.stderr[-3000:]
    assert "recommendation: fine-tune more blocks" in leaves.stdout
