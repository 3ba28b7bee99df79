"""One real transfer-learning run on the study's own leaves photos with the embedded ImageNet weights."""

import json

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_leaves3_efficientnet_lite0_is_far_above_chance(shared_data, tmp_path):
    result = run_cli(
        "fit",
        "--config",
        "leaves_efficientnet_lite0.yaml",
        "--data.root",
        str(shared_data / "leaves3"),
        "--model.head_epochs",
        "3",
        "--model.finetune_epochs",
        "1",
        "--data.batch_size",
        "16",
        "--data.num_workers",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(
        (tmp_path / "lightning_logs" / "leaves3_efficientnet_lite0" / "version_0" / "metrics.json").read_text()
    )
    assert metrics["weights"].startswith("embedded:")
    for phase in ("head", "finetune"):
        assert metrics["phases"][phase]["test_acc"] >= 0.8, metrics["phases"][phase]  # chance is 1/3
        assert metrics["phases"][phase]["val_acc"] >= 0.8
