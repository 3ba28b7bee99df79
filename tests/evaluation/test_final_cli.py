"""Through the CLI: the final model recorded by fit and picked by load, classify and test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import copy_run, run_cli
from tlbench import load


@pytest.fixture(scope="module")
def fitted(tiny_fit, tmp_path_factory) -> Path:
    """A copy of the session's tiny run (``test`` adds a version beside it), after checking what its fit printed."""
    run, result = tiny_fit
    assert f"final model: {json.loads((run / 'metrics.json').read_text())['final']['phase']} (" in result.stdout
    return copy_run(run, tmp_path_factory.mktemp("final"))


def test_fit_records_the_phase_with_the_lower_val_loss_and_load_classify_test_use_it(fitted, tiny_run):
    metrics = json.loads((fitted / "metrics.json").read_text())
    head, finetune = (metrics["phases"][phase]["val_loss"] for phase in ("head", "finetune"))
    final = metrics["final"]["phase"]
    assert final == ("head" if head <= finetune else "finetune")
    assert metrics["final"]["why"].startswith(f"val_loss {min(head, finetune):.3f}")
    best = metrics["phases"][final]["best_ckpt"]
    assert str(load(fitted).trained.source) == best and load(fitted).trained.phase == final
    other = "finetune" if final == "head" else "head"
    assert str(load(fitted, phase=other).trained.source) == metrics["phases"][other]["best_ckpt"]

    images = sorted((tiny_run.parents[2] / "tiny").glob("class_0/*.png"))[:2]
    classified = run_cli("classify", str(fitted), *map(str, images), cwd=fitted.parents[2])
    assert classified.returncode == 0, classified.stderr[-2000:]
    assert f"cnn1 ({final}) from {best}" in classified.stdout

    tested = run_cli(
        "test", "--config", str(fitted / "config.yaml"), "--trainer.enable_progress_bar", "false",
        cwd=fitted.parents[2],
    )  # fmt: skip
    assert tested.returncode == 0, tested.stderr[-2000:]
    assert f"testing the final model of {fitted}: {best}" in tested.stdout
