"""Through the CLI: the final model recorded by fit and picked by load, classify and test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY_FIT_ARGS, make_dataset, run_tlbench
from tlbench import load


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("final")
    data = make_dataset(root / "tiny")
    result = run_tlbench("fit", "--data.root", str(data), *TINY_FIT_ARGS, cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    run = root / "lightning_logs" / "tiny_cnn1" / "version_0"
    assert f"final model: {json.loads((run / 'metrics.json').read_text())['final']['phase']} (" in result.stdout
    return run


def test_fit_records_the_phase_with_the_lower_val_loss_and_load_classify_test_use_it(fitted):
    metrics = json.loads((fitted / "metrics.json").read_text())
    head, finetune = (metrics["phases"][phase]["val_loss"] for phase in ("head", "finetune"))
    final = metrics["final"]["phase"]
    assert final == ("head" if head <= finetune else "finetune")
    assert metrics["final"]["why"].startswith(f"val_loss {min(head, finetune):.3f}")
    best = metrics["phases"][final]["best_ckpt"]
    assert str(load(fitted).trained.source) == best and load(fitted).trained.phase == final
    other = "finetune" if final == "head" else "head"
    assert str(load(fitted, phase=other).trained.source) == metrics["phases"][other]["best_ckpt"]

    images = sorted((fitted.parents[2] / "tiny").glob("class_0/*.png"))[:2]
    classified = run_tlbench("classify", str(fitted), *map(str, images), cwd=fitted.parents[2])
    assert classified.returncode == 0, classified.stderr[-2000:]
    assert f"cnn1 ({final}) from {best}" in classified.stdout

    tested = run_tlbench(
        "test", "--config", str(fitted / "config.yaml"), "--trainer.enable_progress_bar", "false",
        cwd=fitted.parents[2],
    )  # fmt: skip
    assert tested.returncode == 0, tested.stderr[-2000:]
    assert f"testing the final model of {fitted}: {best}" in tested.stdout
