"""Statistics against small cases worked out by hand, plus the degenerate cases the module documents."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest

from tlbench.evaluation import stats

# Three-class toy case used throughout. Confusion (rows true, columns predicted):
#   [[2, 1, 0],
#    [0, 1, 1],
#    [0, 0, 1]]
# class 0: P = 2/2, R = 2/3, F1 = 0.8;  class 1: P = 1/2, R = 1/2, F1 = 0.5;  class 2: P = 1/2, R = 1, F1 = 2/3
Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
Y_PRED = np.array([0, 0, 1, 1, 2, 2])


def test_wilson_interval_matches_published_value_for_8_of_10():
    lo, hi = stats.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4)
    assert hi == pytest.approx(0.9433, abs=1e-4)


def test_wilson_interval_keeps_width_at_perfect_accuracy():
    # Wald would give (1, 1); Wilson's lower bound for 10/10 is n / (n + z^2).
    lo, hi = stats.wilson_interval(10, 10)
    assert lo == pytest.approx(10 / (10 + 1.959964**2), abs=1e-6)
    assert hi == 1.0


def test_wilson_interval_narrows_with_lower_confidence():
    wide = stats.wilson_interval(8, 10, confidence=0.95)
    narrow = stats.wilson_interval(8, 10, confidence=0.80)
    assert wide[0] < narrow[0] and narrow[1] < wide[1]


def test_wilson_interval_of_no_trials_excludes_nothing():
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)


def test_confusion_matrix_counts():
    np.testing.assert_array_equal(stats.confusion_matrix(Y_TRUE, Y_PRED, 3), [[2, 1, 0], [0, 1, 1], [0, 0, 1]])


def test_labels_outside_the_class_range_are_rejected():
    with pytest.raises(ValueError, match="outside"):
        stats.confusion_matrix([0, 3], [0, 1], 3)


def test_macro_f1_on_three_class_toy_case():
    assert stats.macro_f1(Y_TRUE, Y_PRED, 3) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_balanced_accuracy_is_mean_recall():
    assert stats.balanced_accuracy(Y_TRUE, Y_PRED, 3) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_classification_report_rows():
    report = stats.classification_report(Y_TRUE, Y_PRED, ["a", "b", "c"])
    assert list(report.index) == ["a", "b", "c", "macro avg", "weighted avg"]
    np.testing.assert_allclose(report.loc[["a", "b", "c"], "precision"], [1.0, 0.5, 0.5])
    np.testing.assert_allclose(report.loc[["a", "b", "c"], "recall"], [2 / 3, 0.5, 1.0])
    np.testing.assert_allclose(report.loc[["a", "b", "c"], "f1"], [0.8, 0.5, 2 / 3])
    assert list(report.support) == [3, 2, 1, 6, 6]
    assert report.loc["macro avg", "f1"] == pytest.approx(stats.macro_f1(Y_TRUE, Y_PRED, 3))
    assert report.loc["weighted avg", "f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)


def test_class_absent_from_truth_and_predictions_has_f1_zero_but_does_not_lower_macro_f1():
    report = stats.classification_report(Y_TRUE, Y_PRED, ["a", "b", "c", "unseen"])
    assert report.loc["unseen", "f1"] == 0.0
    assert report.loc["unseen", "support"] == 0
    assert stats.macro_f1(Y_TRUE, Y_PRED, 4) == pytest.approx(stats.macro_f1(Y_TRUE, Y_PRED, 3))
    assert stats.macro_f1([0, 1], [0, 1], 5) == 1.0


def test_class_predicted_without_support_counts_as_f1_zero():
    # class 0: P = 1, R = 1/2, F1 = 2/3; class 1 has no support but one (wrong) prediction: F1 = 0.
    assert stats.macro_f1([0, 0], [0, 1], 2) == pytest.approx((2 / 3 + 0) / 2)
    # balanced accuracy only averages classes with support, where recall exists
    assert stats.balanced_accuracy([0, 0], [0, 1], 2) == pytest.approx(0.5)


def test_batched_metrics_equal_row_by_row():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 4, size=(7, 20))
    y_pred = rng.integers(0, 4, size=(7, 20))
    for metric in (stats.macro_f1, stats.balanced_accuracy):
        batched = metric(y_true, y_pred, 4)
        assert batched.shape == (7,)
        np.testing.assert_allclose(batched, [metric(t, p, 4) for t, p in zip(y_true, y_pred)])


def test_top_k_accuracy():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    y_true = [0, 1, 0, 2]  # true-class ranks: 1, 2, 3, 3
    assert stats.top_k_accuracy(probs, y_true, 1) == 0.25
    assert stats.top_k_accuracy(probs, y_true, 2) == 0.5
    assert stats.top_k_accuracy(probs, y_true, 3) == 1.0


def test_top_1_accuracy_with_ties_equals_argmax_accuracy():
    uniform = np.full((4, 3), 1 / 3)
    assert stats.top_k_accuracy(uniform, [0, 1, 2, 0], 1) == 0.5


def test_expected_calibration_error_four_sample_example():
    # confidence / correct: 0.9 right -> (0.8, 1.0];  0.6 wrong -> (0.4, 0.6];
    # 0.7 right and 0.8 wrong -> (0.6, 0.8]: mean confidence 0.75, accuracy 0.5.
    # ECE = (1 * |1 - 0.9| + 1 * |0 - 0.6| + 2 * |0.5 - 0.75|) / 4 = 0.3
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    ece, table = stats.expected_calibration_error(probs, [0, 1, 1, 0], n_bins=5)
    assert ece == pytest.approx(0.3)
    assert list(table["count"]) == [0, 0, 1, 2, 1]
    assert table.loc[3, "confidence"] == pytest.approx(0.75)
    assert table.loc[3, "accuracy"] == pytest.approx(0.5)
    assert math.isnan(table.loc[0, "accuracy"])


def test_calibration_bins_are_closed_on_the_right():
    _, table = stats.expected_calibration_error(np.array([[0.7, 0.3]]), [0], n_bins=10)
    assert table.loc[6, "count"] == 1  # 0.7 belongs to (0.6, 0.7], not (0.7, 0.8]


def test_mcnemar_exact_p_value_for_b1_c7():
    correct_a = [1] * 1 + [0] * 7 + [1] * 10 + [0] * 3
    correct_b = [0] * 1 + [1] * 7 + [1] * 10 + [0] * 3
    result = stats.mcnemar_test(correct_a, correct_b)
    assert (result.b, result.c) == (1, 7)
    assert result.p_value == pytest.approx(0.0703125)  # 2 * (1 + 8) / 2**8
    assert stats.mcnemar_test(correct_b, correct_a) == (result.p_value, 7, 1)


def test_mcnemar_without_discordant_pairs_is_p_one():
    assert stats.mcnemar_test([1, 0, 1], [1, 0, 1]) == (1.0, 0, 0)


def test_mcnemar_does_not_underflow_on_many_discordant_pairs():
    # 1300 discordant pairs: 0.5**1300 underflows to 0 in floats; normal approximation gives p ~ 0.0056.
    result = stats.mcnemar_test([1] * 600 + [0] * 700, [0] * 600 + [1] * 700)
    assert 0.003 < result.p_value < 0.01


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 40)
    y_pred = np.where(rng.random(40) < 0.7, y_true, rng.integers(0, 3, 40))
    metric = partial(stats.macro_f1, n_classes=3)
    first = stats.bootstrap_interval(metric, y_true, y_pred, n_resamples=500, seed=7)
    assert stats.bootstrap_interval(metric, y_true, y_pred, n_resamples=500, seed=7) == first
    assert stats.bootstrap_interval(metric, y_true, y_pred, n_resamples=500, seed=8) != first
    assert first[0] < metric(y_true, y_pred) < first[1]


def test_bootstrap_does_not_depend_on_memory_chunking(monkeypatch):
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    metric = partial(stats.macro_f1, n_classes=3)
    whole = stats.bootstrap_interval(metric, y_true, y_pred, n_resamples=300)
    monkeypatch.setattr(stats, "_BOOTSTRAP_CHUNK_ELEMENTS", 70)  # one resample per chunk
    assert stats.bootstrap_interval(metric, y_true, y_pred, n_resamples=300) == whole


def test_paired_bootstrap_difference():
    correct_a = np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 1])
    correct_b = np.array([1, 1, 1, 1, 1, 1, 0, 1, 1, 1])
    result = stats.paired_bootstrap_difference(correct_a, correct_b, n_resamples=1000, seed=0)
    assert result.difference == pytest.approx(0.3)
    # B is never worse on any item, so no resample can show B behind A
    assert 0.0 <= result.ci_lo < 0.3 < result.ci_hi
    assert stats.paired_bootstrap_difference(correct_a, correct_a) == (0.0, 0.0, 0.0)


def test_no_samples_gives_nan():
    empty = np.array([], dtype=int)
    assert math.isnan(stats.accuracy(empty, empty))
    assert math.isnan(stats.macro_f1(empty, empty, 3))
    assert math.isnan(stats.balanced_accuracy(empty, empty, 3))
    assert math.isnan(stats.top_k_accuracy(np.zeros((0, 3)), empty, 1))
    assert math.isnan(stats.expected_calibration_error(np.zeros((0, 3)), empty)[0])
    assert all(map(math.isnan, stats.bootstrap_interval(stats.accuracy, empty, empty)))
    assert all(map(math.isnan, stats.paired_bootstrap_difference(empty, empty)))
