"""From a predictions table to the metrics and files a run reports.

The predictions table (``predictions_<phase>.csv``) is the contract between prediction and evaluation:
``path, split, true_label, pred_label, correct, top1_label, top1_prob, ..., prob_<class>...``. Working from
the table rather than from a model means ``fit``, ``test`` and ``report`` compute identical numbers, and a
report can be regenerated from saved CSVs without a GPU or a checkpoint.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from tlbench.evaluation import plots, stats
from tlbench.io import write_csv

CONFIDENCE = 0.95
SIGNIFICANCE = 0.05


def _class_indices(labels: pd.Series, classes: list[str], column: str) -> np.ndarray:
    """Class names to indices; compared as strings because CSV round-trips turn class "0" into the integer 0."""
    index = {str(name): i for i, name in enumerate(classes)}
    mapped = labels.astype(str).map(index)
    unknown = sorted(set(labels.astype(str)[mapped.isna()]))
    if unknown:
        raise ValueError(f"{column} holds labels not in the class list: {unknown[:5]}")
    return mapped.to_numpy(dtype=np.int64)


def _rows_of_split(table: pd.DataFrame, split: str) -> pd.DataFrame:
    rows = table[table["split"].astype(str) == split]
    if rows.empty:
        raise ValueError(f"the predictions table has no rows with split == {split!r}")
    return rows


def top_k_for(n_classes: int) -> int | None:
    """The one top-k worth reporting: 5, or fewer when that would be every class (trivially 100%)."""
    return min(5, n_classes - 1) if n_classes > 2 else None


def evaluate_predictions(
    table: pd.DataFrame,
    classes: list[str],
    out_dir: str | Path,
    phase: str,
    data_root: str | Path | None = None,
    split: str = "test",
    n_resamples: int = 2000,
    seed: int = 0,
    overlays: plots.Overlays | None = None,
) -> dict:
    """Metrics with 95% intervals for the ``split`` rows of ``table``, and the report files in ``out_dir``.

    Keys are prefixed with ``split`` (``test_acc``, ``test_acc_ci95``, ``test_balanced_acc``,
    ``test_macro_f1``, ``test_macro_f1_ci95``, ``test_top{k}_acc`` when ``top_k_for`` gives a k,
    ``test_ece``, ``test_n``) plus ``artifacts``, mapping each artefact to its file name in ``out_dir``.
    Accuracy uses the Wilson interval, macro F1 a percentile bootstrap (``n_resamples``, ``seed``). ECE is
    computed from the ``prob_<class>`` columns (top-1 confidence); the other metrics from ``pred_label``.
    Files: ``classification_report_<phase>.csv``, ``confusion_<phase>.csv`` (rows true, columns predicted),
    ``confusion_<phase>.png``, ``reliability_<phase>.png``, and ``top_losses_<phase>.png`` if ``data_root``
    is given (with ``overlays``, its images show Grad-CAM heatmaps). The result holds only plain floats, ints,
    strings and lists, ready for ``json.dump``.
    """
    rows = _rows_of_split(table, split)
    out_dir = Path(out_dir)
    n_classes = len(classes)
    y_true = _class_indices(rows["true_label"], classes, "true_label")
    y_pred = _class_indices(rows["pred_label"], classes, "pred_label")
    probs = rows[[f"prob_{name}" for name in classes]].to_numpy(dtype=float)

    n = len(rows)
    ece, bin_table = stats.expected_calibration_error(probs, y_true)
    metrics: dict = {
        "acc": stats.accuracy(y_true, y_pred),
        "acc_ci95": list(stats.wilson_interval(int((y_true == y_pred).sum()), n, CONFIDENCE)),
        "balanced_acc": stats.balanced_accuracy(y_true, y_pred, n_classes),
        "macro_f1": stats.macro_f1(y_true, y_pred, n_classes),
        "macro_f1_ci95": list(
            stats.bootstrap_interval(
                partial(stats.macro_f1, n_classes=n_classes), y_true, y_pred, n_resamples, seed, CONFIDENCE
            )
        ),
    }
    k = top_k_for(n_classes)
    if k is not None:
        metrics[f"top{k}_acc"] = stats.top_k_accuracy(probs, y_true, k)
    metrics["ece"] = ece
    metrics["n"] = n
    result = {f"{split}_{name}": value for name, value in metrics.items()}

    artifacts = {
        "classification_report": f"classification_report_{phase}.csv",
        "confusion_matrix": f"confusion_{phase}.csv",
        "confusion_plot": f"confusion_{phase}.png",
        "reliability_diagram": f"reliability_{phase}.png",
    }
    write_csv(
        out_dir / artifacts["classification_report"],
        stats.classification_report(y_true, y_pred, classes),
        index=True,
        index_label="class",
    )
    cm = stats.confusion_matrix(y_true, y_pred, n_classes)
    write_csv(
        out_dir / artifacts["confusion_matrix"],
        pd.DataFrame(cm, index=classes, columns=classes),
        index=True,
        index_label="true\\predicted",
    )
    plots.plot_confusion_matrix(
        cm, classes, out_dir / artifacts["confusion_plot"], f"Confusion matrix ({phase}, {split})"
    )
    plots.plot_reliability_diagram(bin_table, ece, out_dir / artifacts["reliability_diagram"])
    if data_root is not None:
        artifacts["top_losses"] = f"top_losses_{phase}.png"
        plots.plot_top_losses(rows, data_root, out_dir / artifacts["top_losses"], overlays=overlays)
    result["artifacts"] = artifacts
    return result


def _signed(value: float) -> str:
    """``+4.2`` / ``−1.0`` with a true minus sign, for sentences people read."""
    return f"{value:+.1f}".replace("-", "\u2212")


def _format_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def compare_phases(
    table_a: pd.DataFrame,
    table_b: pd.DataFrame,
    split: str = "test",
    change: str = "fine-tuning",
    n_resamples: int = 2000,
    seed: int = 0,
    overlays: plots.Overlays | None = None,
) -> dict:
    """Paired comparison of two prediction tables on the same ``split`` images (B relative to A).

    Rows are matched by ``path``, so the tables need not be in the same order, but they must cover the same
    images: comparing accuracies on different test sets is not a paired comparison and raises. Returns
    ``n``, ``acc_a``, ``acc_b``, ``acc_diff`` (B − A), ``acc_diff_ci95`` (paired bootstrap),
    ``mcnemar_p`` (exact), ``mcnemar_b`` (images only A got right), ``mcnemar_c`` (only B got right), and
    ``verdict``, one sentence naming ``change`` as the cause of the difference, e.g.
    "fine-tuning changed accuracy by +4.2 points [−1.0, +9.4]; McNemar p=0.25: not significant at 0.05".
    """
    correct = []
    for name, table in (("a", table_a), ("b", table_b)):
        rows = _rows_of_split(table, split)
        duplicated = rows["path"][rows["path"].duplicated()]
        if not duplicated.empty:
            raise ValueError(f"table_{name} lists {split} images more than once, e.g. {duplicated.iloc[0]!r}")
        correct.append(rows.set_index("path")["correct"].astype(bool))
    correct_a, correct_b = correct
    if set(correct_a.index) != set(correct_b.index):
        differing = sorted(set(correct_a.index) ^ set(correct_b.index))
        raise ValueError(f"the tables cover different {split} images ({len(differing)} differ, e.g. {differing[0]!r})")
    flags_a = correct_a.to_numpy()
    flags_b = correct_b.reindex(correct_a.index).to_numpy()

    test = stats.mcnemar_test(flags_a, flags_b)
    difference = stats.paired_bootstrap_difference(flags_a, flags_b, n_resamples, seed, CONFIDENCE)
    verdict = (
        f"{change} changed accuracy by {_signed(100 * difference.difference)} points "
        f"[{_signed(100 * difference.ci_lo)}, {_signed(100 * difference.ci_hi)}]; McNemar {_format_p(test.p_value)}: "
        f"{'significant' if test.p_value < SIGNIFICANCE else 'not significant'} at {SIGNIFICANCE:g}"
    )
    return {
        "n": len(flags_a),
        "acc_a": float(flags_a.mean()),
        "acc_b": float(flags_b.mean()),
        "acc_diff": difference.difference,
        "acc_diff_ci95": [difference.ci_lo, difference.ci_hi],
        "mcnemar_p": test.p_value,
        "mcnemar_b": test.b,
        "mcnemar_c": test.c,
        "verdict": verdict,
    }
