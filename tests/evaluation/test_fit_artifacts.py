"""``fit`` and ``test`` write the evaluation artefacts, and metrics.json agrees with the prediction CSVs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import TINY_FIT_ARGS, make_dataset, run_cli
from tlbench.evaluation.artifacts import compare_phases, evaluate_predictions

PHASE_FILES = (
    "classification_report_{}.csv",
    "confusion_{}.csv",
    "confusion_{}.png",
    "reliability_{}.png",
    "top_losses_{}.png",
)


@pytest.fixture(scope="module")
def tta_run(tmp_path_factory) -> tuple[Path, dict, str]:
    """One tiny two-phase fit with TTA: (run dir, metrics.json, stdout)."""
    cwd = tmp_path_factory.mktemp("fit")
    data = make_dataset(cwd / "tiny", classes=4, per_class=10)
    result = run_cli("fit", "--data.root", str(data), *TINY_FIT_ARGS, "--model.tta", "true", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    run = cwd / "lightning_logs" / "tiny_cnn1" / "version_0"
    return run, json.loads((run / "metrics.json").read_text()), result.stdout


def test_fit_writes_every_report_and_logs_the_confusion_matrix(tta_run):
    run, metrics, stdout = tta_run
    for phase in ("head", "finetune", "head_tta", "finetune_tta"):
        for pattern in PHASE_FILES:
            assert (run / pattern.format(phase)).stat().st_size > 0, pattern.format(phase)
    assert (run / "learning_curves.png").stat().st_size > 0 and metrics["artifacts"] == {
        "learning_curves": "learning_curves.png"
    }
    assert metrics["phases"]["head"]["artifacts"]["confusion_plot"] == "confusion_head.png"
    images = set()
    for events in run.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
        accumulator.Reload()
        images |= set(accumulator.Tags()["images"])
    assert {"confusion/head", "confusion/finetune"} <= images
    assert "fine-tuning changed accuracy by" in stdout and "95% CI (bootstrap)" in stdout
    assert "reports: classification_report_<phase>.csv" in stdout and "learning_curves.png" in stdout


def _recomputed(run: Path, predictions: str, classes: list[str], tmp_path: Path, name: str) -> dict:
    table = pd.read_csv(run / predictions)
    return evaluate_predictions(table, classes, tmp_path, name)


def test_metrics_json_equals_what_the_prediction_csvs_give(tta_run, tmp_path):
    run, metrics, _ = tta_run
    classes = metrics["classes"]
    for phase in ("head", "finetune"):
        stored = metrics["phases"][phase]
        table = pd.read_csv(run / stored["predictions"])
        assert stored["test_n"] == len(table) == metrics["split_sizes"]["test"]
        assert stored["test_acc"] == pytest.approx(table.correct.mean())
        recomputed = _recomputed(run, stored["predictions"], classes, tmp_path, phase)
        for key in (
            "test_acc",
            "test_acc_ci95",
            "test_balanced_acc",
            "test_macro_f1",
            "test_macro_f1_ci95",
            "test_top3_acc",
            "test_ece",
        ):
            assert stored[key] == pytest.approx(recomputed[key]), (phase, key)
        report = pd.read_csv(run / f"classification_report_{phase}.csv", index_col="class")
        assert report.loc["macro avg", "f1"] == pytest.approx(stored["test_macro_f1"])
    head, finetune = (pd.read_csv(run / f"predictions_{phase}.csv") for phase in ("head", "finetune"))
    expected = compare_phases(head, finetune)
    assert metrics["comparison"]["verdict"] == expected["verdict"]
    assert metrics["comparison"]["acc_diff_ci95"] == pytest.approx(expected["acc_diff_ci95"])


def test_tta_is_reported_beside_the_plain_numbers(tta_run, tmp_path):
    run, metrics, stdout = tta_run
    for phase in ("head", "finetune"):
        stored = metrics["phases"][phase]
        plain = pd.read_csv(run / stored["predictions"])
        tta = pd.read_csv(run / stored["tta"]["predictions"])
        assert stored["tta"]["predictions"] == f"predictions_{phase}_tta.csv"
        assert list(tta.path) == list(plain.path)
        probs = [f"prob_{name}" for name in metrics["classes"]]
        assert not np.allclose(tta[probs], plain[probs]), "TTA must average in the flipped image"
        assert stored["test_acc"] == pytest.approx(plain.correct.mean())
        recomputed = _recomputed(run, stored["tta"]["predictions"], metrics["classes"], tmp_path, f"{phase}_tta")
        assert stored["tta"]["test_macro_f1_ci95"] == pytest.approx(recomputed["test_macro_f1_ci95"])
    assert "head+tta" in stdout and "finetune+tta" in stdout


def test_test_command_writes_the_same_reports_in_its_own_run(tta_run):
    run, metrics, _ = tta_run
    cwd = run.parents[2]
    best = metrics["phases"]["finetune"]["best_ckpt"]
    result = run_cli("test", "--config", str(run / "config.yaml"), "--ckpt_path", best, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    retest_dir = run.parent / "version_1"
    retest = json.loads((retest_dir / "metrics.json").read_text())["phases"]["finetune"]
    for phase in ("finetune", "finetune_tta"):
        for pattern in PHASE_FILES:
            assert (retest_dir / pattern.format(phase)).stat().st_size > 0
    for key in ("test_acc", "test_acc_ci95", "test_macro_f1", "test_macro_f1_ci95", "test_ece"):
        assert retest[key] == pytest.approx(metrics["phases"]["finetune"][key])
        assert retest["tta"][key] == pytest.approx(metrics["phases"]["finetune"]["tta"][key])
    assert (retest_dir / "confusion_finetune.csv").read_text() == (run / "confusion_finetune.csv").read_text()
