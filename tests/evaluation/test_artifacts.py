"""Artefacts from a generated predictions table with tiny generated images: files exist, load, and agree with stats."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tlbench.evaluation import plots, stats
from tlbench.evaluation.artifacts import compare_phases, evaluate_predictions

CLASSES = ["cat", "dog", "fox"]


def make_table(root: Path | None, classes: list[str], n_test: int, n_val: int = 0, seed: int = 0) -> pd.DataFrame:
    """A predictions table in the contract's layout, about 70% correct, optionally with 8x8 PNGs under ``root``."""
    rng = np.random.default_rng(seed)
    n = n_test + n_val
    y_true = rng.integers(0, len(classes), n)
    logits = rng.normal(size=(n, len(classes)))
    logits[np.arange(n), y_true] += np.where(rng.random(n) < 0.7, 3.0, -3.0)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y_pred = probs.argmax(axis=1)
    paths = [f"{classes[label]}/img_{i:03d}.png" for i, label in enumerate(y_true)]
    table = pd.DataFrame(
        {
            "path": paths,
            "split": ["test"] * n_test + ["val"] * n_val,
            "true_label": [classes[i] for i in y_true],
            "pred_label": [classes[i] for i in y_pred],
            "correct": (y_true == y_pred).astype(int),
        }
    )
    order = np.argsort(-probs, axis=1, kind="stable")
    for rank in range(min(5, len(classes))):
        table[f"top{rank + 1}_label"] = [classes[i] for i in order[:, rank]]
        table[f"top{rank + 1}_prob"] = probs[np.arange(n), order[:, rank]]
    for i, name in enumerate(classes):
        table[f"prob_{name}"] = probs[:, i]
    if root is not None:
        for path, label in zip(paths, y_true):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (80 * label, 120, 40)).save(root / path)
    return table


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One evaluation shared by the read-only checks below; plotting is the slow part."""
    tmp_path = tmp_path_factory.mktemp("evaluated")
    data_root = tmp_path / "data"
    table = make_table(data_root, CLASSES, n_test=30, n_val=6)
    result = evaluate_predictions(table, CLASSES, tmp_path / "out", "head", data_root=data_root, n_resamples=200)
    return table, result, tmp_path / "out"


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        assert image.width > 50 and image.height > 50


def test_metrics_are_computed_on_test_rows_only(evaluated):
    table, result, _ = evaluated
    test = table[table.split == "test"]
    assert result["test_n"] == 30
    assert result["test_acc"] == pytest.approx(test.correct.mean())
    lo, hi = result["test_acc_ci95"]
    assert (lo, hi) == pytest.approx(stats.wilson_interval(int(test.correct.sum()), 30))
    assert lo < result["test_acc"] < hi


def test_result_is_plain_json(evaluated):
    _, result, _ = evaluated
    assert json.loads(json.dumps(result)) == result
    assert sorted(result) == sorted(
        [
            "test_acc",
            "test_acc_ci95",
            "test_balanced_acc",
            "test_macro_f1",
            "test_macro_f1_ci95",
            "test_top2_acc",
            "test_ece",
            "test_n",
            "artifacts",
        ]
    )
    scalars = [value for key, value in result.items() if key not in ("artifacts", "test_n")]
    assert all(
        type(value) is float or (type(value) is list and all(type(v) is float for v in value)) for value in scalars
    )
    assert type(result["test_n"]) is int


def test_report_csv_agrees_with_result(evaluated):
    _, result, out = evaluated
    report = pd.read_csv(out / result["artifacts"]["classification_report"], index_col="class")
    assert list(report.index) == [*CLASSES, "macro avg", "weighted avg"]
    assert report.loc["macro avg", "f1"] == pytest.approx(result["test_macro_f1"])
    assert report.loc["macro avg", "support"] == 30
    lo, hi = result["test_macro_f1_ci95"]
    assert lo <= result["test_macro_f1"] <= hi


def test_confusion_csv_is_labelled_and_agrees_with_accuracy(evaluated):
    table, result, out = evaluated
    cm = pd.read_csv(out / result["artifacts"]["confusion_matrix"], index_col=0)
    assert list(cm.index) == CLASSES and list(cm.columns) == CLASSES
    test = table[table.split == "test"]
    assert cm.to_numpy().sum() == 30
    assert np.trace(cm.to_numpy()) == test.correct.sum()
    assert cm.loc["cat"].sum() == (test.true_label == "cat").sum()


def test_png_artefacts_open_and_nothing_else_is_left(evaluated):
    _, result, out = evaluated
    for name in ("confusion_plot", "reliability_diagram", "top_losses"):
        assert_png(out / result["artifacts"][name])
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in out.iterdir()) == sorted(result["artifacts"].values())


def test_top_losses_only_with_data_root(tmp_path):
    result = evaluate_predictions(make_table(None, CLASSES, 12), CLASSES, tmp_path, "head", n_resamples=50)
    assert "top_losses" not in result["artifacts"]
    assert not (tmp_path / "top_losses_head.png").exists()


@pytest.mark.parametrize(("n_classes", "expected_key"), [(2, None), (4, "test_top3_acc"), (7, "test_top5_acc")])
def test_top_k_is_reported_only_below_the_number_of_classes(tmp_path, n_classes, expected_key):
    classes = [f"c{i}" for i in range(n_classes)]
    result = evaluate_predictions(make_table(None, classes, 20), classes, tmp_path, "head", n_resamples=50)
    assert [key for key in result if key.startswith("test_top")] == ([expected_key] if expected_key else [])


def test_numeric_class_names_survive_a_csv_round_trip(tmp_path):
    classes = ["0", "1", "2"]
    make_table(None, classes, 15).to_csv(tmp_path / "predictions.csv", index=False)
    reloaded = pd.read_csv(tmp_path / "predictions.csv")  # labels come back as integers
    result = evaluate_predictions(reloaded, classes, tmp_path, "head", n_resamples=50)
    assert result["test_acc"] == pytest.approx(reloaded.correct.mean())


def test_a_table_without_test_rows_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="split == 'test'"):
        evaluate_predictions(make_table(None, CLASSES, 0, n_val=5), CLASSES, tmp_path, "head")


def test_top_losses_are_most_confident_mistakes_first():
    table = make_table(None, CLASSES, 40)
    worst = plots._wrong_by_confidence(table)
    assert len(worst) == (table.correct == 0).sum()
    expected = sorted((row[f"prob_{row.pred_label}"] for _, row in table[table.correct == 0].iterrows()), reverse=True)
    np.testing.assert_allclose(worst.wrong_prob, expected)


def test_top_losses_without_mistakes_still_writes_an_image(tmp_path):
    table = make_table(None, CLASSES, 10)
    perfect = table[table.correct == 1]
    assert_png(plots.plot_top_losses(perfect, tmp_path, tmp_path / "top.png"))


def test_top_losses_survive_a_missing_image(tmp_path):
    table = make_table(None, CLASSES, 20)  # no images written under tmp_path
    assert_png(plots.plot_top_losses(table, tmp_path, tmp_path / "top.png", n=3))


def test_learning_curves_with_unlogged_values(tmp_path):
    history = pd.DataFrame(
        {
            "epoch": range(6),
            "phase": ["head"] * 3 + ["finetune"] * 3,
            "train_loss": [1.0, 0.8, 0.7, 0.6, 0.5, 0.4],
            "val_loss": [1.1, 0.9, np.nan, 0.7, 0.65, 0.6],
            "train_acc": [0.5, 0.6, 0.65, 0.7, 0.75, 0.8],
            "val_acc": [0.45, 0.55, np.nan, 0.65, 0.7, 0.72],
        }
    )
    assert_png(plots.plot_learning_curves(history, tmp_path / "curves.png", boundary_epoch=2.5))


def make_pair(n_a_only: int, n_b_only: int, n_both: int, n_neither: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = n_a_only + n_b_only + n_both + n_neither
    correct_a = [1] * n_a_only + [0] * n_b_only + [1] * n_both + [0] * n_neither
    correct_b = [0] * n_a_only + [1] * n_b_only + [1] * n_both + [0] * n_neither
    paths = [f"x/{i}.png" for i in range(n)]
    table_a = pd.DataFrame({"path": paths, "split": "test", "correct": correct_a})
    table_b = pd.DataFrame({"path": paths, "split": "test", "correct": correct_b})
    return table_a, table_b.iloc[::-1].reset_index(drop=True)  # B in another row order: matched by path


def test_compare_phases_matches_by_path_and_reports_mcnemar():
    table_a, table_b = make_pair(n_a_only=1, n_b_only=7, n_both=10, n_neither=2)
    comparison = compare_phases(table_a, table_b, n_resamples=500)
    assert (comparison["mcnemar_b"], comparison["mcnemar_c"]) == (1, 7)
    assert comparison["mcnemar_p"] == pytest.approx(0.0703125)
    assert comparison["acc_diff"] == pytest.approx(6 / 20)
    lo, hi = comparison["acc_diff_ci95"]
    assert lo < 0.3 < hi
    match = re.fullmatch(
        r"fine-tuning changed accuracy by \+30\.0 points \[([+\u2212][\d.]+), ([+\u2212][\d.]+)\]; "
        r"McNemar p=0\.07: not significant at 0\.05",
        comparison["verdict"],
    )
    assert match, comparison["verdict"]
    bounds = [float(text.replace("\u2212", "-")) for text in match.groups()]
    assert bounds == pytest.approx([100 * lo, 100 * hi], abs=0.05)
    assert json.loads(json.dumps(comparison)) == comparison


def test_compare_phases_calls_a_clear_difference_significant():
    table_a, table_b = make_pair(n_a_only=0, n_b_only=15, n_both=10, n_neither=0)
    comparison = compare_phases(table_a, table_b, change="augmentation", n_resamples=200)
    assert comparison["verdict"].startswith("augmentation changed accuracy by +60.0 points")
    assert comparison["verdict"].endswith("McNemar p<0.001: significant at 0.05")


def test_compare_phases_rejects_different_test_sets():
    table_a, table_b = make_pair(1, 1, 3, 0)
    with pytest.raises(ValueError, match="different test images"):
        compare_phases(table_a, table_b.iloc[1:])
