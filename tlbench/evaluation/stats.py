"""Classification statistics with uncertainty, as pure numpy functions over label and probability arrays.

Labels are integer class indices ``0 .. n_classes-1``. Test sets in transfer-learning experiments are small
(tens to hundreds of images), so every headline number here comes with an interval and every comparison of
two models with a paired test: a 3-point accuracy gain on 100 images is usually noise.

The label metrics (``accuracy``, ``macro_f1``, ``balanced_accuracy``) accept arrays of shape ``(..., n)`` and
return one value per leading index, so ``bootstrap_interval`` evaluates all resamples in one numpy call
instead of a Python loop.

Degenerate cases, defined once here so every caller reports them the same way:

* no samples (``n == 0``): point metrics and intervals are ``nan``; ``wilson_interval`` returns ``(0, 1)``,
  the interval that excludes nothing, because zero trials say nothing about the proportion;
* a class with no support has recall 0/0 and a class never predicted has precision 0/0: both are reported
  as 0, so such a class has F1 0 in ``classification_report``;
* macro averages (``macro_f1``, the report's ``macro avg`` row) run over the classes that occur in the true
  or the predicted labels. A class absent from both carries no evidence either way; counting it as F1 0
  would make a perfect classifier score below 1 on a test set lacking a rare class, and would bias bootstrap
  intervals downward whenever a resample happens to miss a rare class. A class that is predicted but has no
  support still counts, with F1 0, because those predictions are all wrong;
* ``balanced_accuracy`` averages recall over the classes with support, the only ones where recall exists;
* McNemar with no discordant pairs returns ``p = 1.0``: the two models never disagree, so there is no
  evidence of a difference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist
from typing import NamedTuple

import numpy as np
import pandas as pd

#: Largest number of resampled labels held in memory at once; bounds bootstrap memory for large test sets.
_BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000


def _alpha(confidence: float) -> float:
    """Two-sided error rate ``1 - confidence``, rejecting levels that make no interval."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return 1.0 - confidence


def _z(confidence: float) -> float:
    """Two-sided standard-normal quantile for ``confidence`` (1.96 for 0.95)."""
    return NormalDist().inv_cdf(1.0 - _alpha(confidence) / 2.0)


def _labels(values, n_classes: int, name: str) -> np.ndarray:
    """``values`` as an integer array, rejecting labels outside ``0 .. n_classes-1`` (they would be miscounted)."""
    array = np.asarray(values)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size and (array.min() < 0 or array.max() >= n_classes):
        raise ValueError(f"{name} holds labels outside 0..{n_classes - 1}")
    return array


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` with 0/0 defined as 0 (the documented convention for empty classes)."""
    numerator = np.asarray(numerator, dtype=float)
    denominator = np.asarray(denominator, dtype=float)
    return np.divide(
        numerator, denominator, out=np.zeros(np.broadcast(numerator, denominator).shape), where=denominator > 0
    )


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion such as accuracy.

    Chosen over the normal (Wald) interval because Wald collapses to zero width at 0% or 100% and
    undercovers badly for the small test sets and high accuracies typical of transfer learning; Wilson stays
    inside [0, 1] and keeps close to nominal coverage down to a handful of samples. ``n == 0`` gives (0, 1).
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half_width = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return float(max(0.0, centre - half_width)), float(min(1.0, centre + half_width))


def bootstrap_interval(
    metric_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    y_true,
    y_pred,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric_fn(y_true, y_pred)`` over resampled test items.

    Used for metrics without a closed-form interval (macro F1, accuracy differences). Items are resampled
    with replacement, the same index drawn for ``y_true`` and ``y_pred`` so pairs stay paired.
    ``metric_fn`` receives ``(n_resamples_in_chunk, n)`` arrays and must return one value per row, as the
    metrics in this module do; resamples are drawn in chunks that bound memory, from one generator seeded
    with ``seed``, so the interval is identical for identical inputs and seed. ``n == 0`` gives (nan, nan).
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D of equal length, got {y_true.shape} and {y_pred.shape}")
    n = len(y_true)
    if n == 0:
        return float("nan"), float("nan")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    alpha = _alpha(confidence)
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)
    values = []
    for start in range(0, n_resamples, chunk):
        index = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
        values.append(np.asarray(metric_fn(y_true[index], y_pred[index]), dtype=float))
    lo, hi = np.quantile(np.concatenate(values), [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def accuracy(y_true, y_pred) -> np.ndarray | float:
    """Fraction of equal labels along the last axis; ``nan`` for no samples."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape[-1] == 0:
        return np.full(y_true.shape[:-1], np.nan) if y_true.ndim > 1 else float("nan")
    result = (y_true == y_pred).mean(axis=-1)
    return float(result) if np.ndim(result) == 0 else result


def _class_counts(y_true, y_pred, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, support and prediction counts per class, shape ``(..., n_classes)``.

    One ``bincount`` over ``row * n_classes + label`` counts every row at once; this is what makes the
    bootstrap fast, and it needs ``O(rows * n_classes)`` memory rather than a confusion matrix per row.
    """
    y_true = _labels(y_true, n_classes, "y_true")
    y_pred = _labels(y_pred, n_classes, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {y_true.shape} vs {y_pred.shape}")
    lead_shape = y_true.shape[:-1]
    rows = int(np.prod(lead_shape))
    offset = (np.arange(rows) * n_classes).reshape(lead_shape + (1,))

    def count(labels: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        keys = (labels + offset)[mask] if mask is not None else (labels + offset).ravel()
        return np.bincount(keys, minlength=rows * n_classes).reshape(lead_shape + (n_classes,))

    return count(y_true, y_true == y_pred), count(y_true), count(y_pred)


def _precision_recall_f1(
    tp: np.ndarray, support: np.ndarray, predicted: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    precision = _safe_ratio(tp, predicted)
    recall = _safe_ratio(tp, support)
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (support + predicted); equal to the harmonic mean, and 0 when empty.
    f1 = _safe_ratio(2 * tp, support + predicted)
    return precision, recall, f1


def _mean_over(values: np.ndarray, include: np.ndarray) -> np.ndarray | float:
    """Mean of ``values`` over the classes where ``include`` is true, along the last axis; ``nan`` if none."""
    total = include.sum(axis=-1)
    result = np.divide((values * include).sum(axis=-1), total, out=np.full(total.shape, np.nan), where=total > 0)
    return float(result) if np.ndim(result) == 0 else result


def macro_f1(y_true, y_pred, n_classes: int) -> np.ndarray | float:
    """Unweighted mean F1 over classes present in ``y_true`` or ``y_pred`` (see module notes); ``nan`` if n=0.

    Reported beside accuracy because accuracy hides a model that ignores small classes.
    """
    tp, support, predicted = _class_counts(y_true, y_pred, n_classes)
    _, _, f1 = _precision_recall_f1(tp, support, predicted)
    return _mean_over(f1, (support + predicted) > 0)


def balanced_accuracy(y_true, y_pred, n_classes: int) -> np.ndarray | float:
    """Mean per-class recall over classes with support; equals accuracy on a balanced test set."""
    tp, support, _ = _class_counts(y_true, y_pred, n_classes)
    return _mean_over(_safe_ratio(tp, support), support > 0)


def _probability_matrix(probs) -> np.ndarray:
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (n_samples, n_classes), got shape {probs.shape}")
    return probs


def top_k_accuracy(probs, y_true, k: int) -> float:
    """Fraction of samples whose true class is among the ``k`` most probable; ``nan`` for no samples.

    Ties are broken towards the lower class index, the same rule ``argmax`` uses for the predicted label,
    so top-1 accuracy equals accuracy even for a model that outputs uniform probabilities.
    """
    probs = _probability_matrix(probs)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    y_true = _labels(y_true, probs.shape[1], "y_true")
    if len(y_true) == 0:
        return float("nan")
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top == y_true[:, None]).any(axis=1).mean())


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` integer counts; row = true class, column = predicted class."""
    y_true = _labels(y_true, n_classes, "y_true").ravel()
    y_pred = _labels(y_pred, n_classes, "y_pred").ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {len(y_true)} vs {len(y_pred)}")
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_report(y_true, y_pred, classes: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, then ``macro avg`` and ``weighted avg`` rows.

    The macro row averages over the same classes as ``macro_f1`` (so its F1 equals ``macro_f1``); the
    weighted row weights each class by its support, as a check on how much small classes pull the macro row.
    """
    tp, support, predicted = _class_counts(y_true, y_pred, len(classes))
    precision, recall, f1 = _precision_recall_f1(tp, support, predicted)
    report = pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support}, index=pd.Index(classes, name="class")
    )
    metrics = report[["precision", "recall", "f1"]]
    present = (support + predicted) > 0
    total = int(support.sum())
    report.loc["macro avg"] = [*(_mean_over(metrics[c].to_numpy(), present) for c in metrics), total]
    weights = _safe_ratio(support, total)
    report.loc["weighted avg"] = [
        *(float(metrics[c].to_numpy() @ weights) if total else np.nan for c in metrics),
        total,
    ]
    report["support"] = report["support"].astype(int)
    return report


def expected_calibration_error(probs, y_true, n_bins: int = 10) -> tuple[float, pd.DataFrame]:
    """ECE of the top-1 confidence, and the per-bin table a reliability diagram is drawn from.

    Confidence (the largest probability) is put into ``n_bins`` equal-width bins ``(lo, hi]`` (the first also
    takes 0). ECE is the sample-weighted mean of ``|accuracy - mean confidence|`` over bins: how far "90%
    sure" is from "right 90% of the time". The table has one row per bin with ``bin_lo, bin_hi, count,
    confidence, accuracy, gap``; empty bins keep ``count`` 0 and ``nan`` elsewhere so the diagram can skip
    them. ECE is ``nan`` for no samples.
    """
    probs = _probability_matrix(probs)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    y_true = _labels(y_true, probs.shape[1], "y_true")
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    # Edges as i / n_bins (not linspace) so 0.7 is exactly an edge and lands in (0.6, 0.7].
    edges = np.arange(n_bins + 1) / n_bins
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    mean_confidence = _nan_ratio(np.bincount(bins, weights=confidence, minlength=n_bins), count)
    bin_accuracy = _nan_ratio(np.bincount(bins, weights=correct.astype(float), minlength=n_bins), count)
    gap = np.abs(bin_accuracy - mean_confidence)
    table = pd.DataFrame(
        {
            "bin_lo": edges[:-1],
            "bin_hi": edges[1:],
            "count": count,
            "confidence": mean_confidence,
            "accuracy": bin_accuracy,
            "gap": gap,
        }
    )
    ece = float(np.nansum(gap * count) / len(probs)) if len(probs) else float("nan")
    return ece, table


def _nan_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Per-bin mean with empty bins as ``nan`` (unlike per-class metrics, where empty means 0)."""
    return np.divide(numerator, denominator, out=np.full(len(denominator), np.nan), where=denominator > 0)


class McNemarResult(NamedTuple):
    p_value: float
    b: int  # items model A got right and model B got wrong
    c: int  # items model A got wrong and model B got right


def mcnemar_test(correct_a, correct_b) -> McNemarResult:
    """Exact McNemar test: do two models evaluated on the same items differ in accuracy?

    Only discordant items (one model right, the other wrong) carry information; under the null each is
    equally likely to favour either model, so ``b ~ Binomial(b + c, 1/2)``. The exact two-sided binomial
    p-value is used rather than the chi-squared approximation because test sets here are small and the
    approximation is poor below about 25 discordant pairs. No discordant pairs gives ``p = 1.0``.
    """
    correct_a, correct_b = _paired_flags(correct_a, correct_b)
    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    n = b + c
    if n == 0:
        return McNemarResult(1.0, b, c)
    # P(X <= min(b, c)) with exact integers: 0.5**n underflows for large n, Python ints do not.
    term, tail = 1, 1
    for i in range(min(b, c)):
        term = term * (n - i) // (i + 1)
        tail += term
    return McNemarResult(min(1.0, 2 * tail / 2**n), b, c)


def _paired_flags(correct_a, correct_b) -> tuple[np.ndarray, np.ndarray]:
    correct_a = np.asarray(correct_a).astype(bool)
    correct_b = np.asarray(correct_b).astype(bool)
    if correct_a.shape != correct_b.shape or correct_a.ndim != 1:
        raise ValueError(f"paired results must be 1-D of equal length, got {correct_a.shape} and {correct_b.shape}")
    return correct_a, correct_b


class PairedDifference(NamedTuple):
    difference: float  # accuracy of B minus accuracy of A
    ci_lo: float
    ci_hi: float


def _accuracy_difference(correct_a: np.ndarray, correct_b: np.ndarray) -> np.ndarray | float:
    return correct_b.mean(axis=-1) - correct_a.mean(axis=-1)


def paired_bootstrap_difference(
    correct_a, correct_b, n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> PairedDifference:
    """Accuracy of B minus accuracy of A on the same items, with a paired percentile-bootstrap interval.

    Resampling items (not each model separately) keeps the correlation between the two models, which is
    what makes the interval much narrower than comparing two independent Wilson intervals. ``nan`` for n=0.
    """
    correct_a, correct_b = _paired_flags(correct_a, correct_b)
    if len(correct_a) == 0:
        return PairedDifference(float("nan"), float("nan"), float("nan"))
    lo, hi = bootstrap_interval(_accuracy_difference, correct_a, correct_b, n_resamples, seed, confidence)
    return PairedDifference(float(_accuracy_difference(correct_a, correct_b)), lo, hi)


def t_quantile(probability: float, df: int) -> float:
    """Student-t quantile for ``probability`` in (0.5, 1), by bisection on the numerically integrated density.

    numpy has no t distribution and scipy is not a dependency; 20,001-point trapezoid integration is accurate
    to about 1e-6 here, far below the rounding of the report.
    """
    scale = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def mass_from_zero(x: float) -> float:
        grid = np.linspace(0.0, x, 20_001)
        return float(np.trapezoid(scale * (1 + grid**2 / df) ** (-(df + 1) / 2), grid))

    target, lo, hi = probability - 0.5, 0.0, 1.0
    while mass_from_zero(hi) < target:
        hi *= 2
    for _ in range(60):
        middle = (lo + hi) / 2
        lo, hi = (middle, hi) if mass_from_zero(middle) < target else (lo, middle)
    return (lo + hi) / 2


def mean_t_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (two or more: e.g. one accuracy per seed)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        raise ValueError("a t interval needs at least two values")
    half = t_quantile(1 - _alpha(confidence) / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)
