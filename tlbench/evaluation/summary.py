"""The summary printed at the end of ``fit``: one line per phase, numbers with their uncertainty."""

from __future__ import annotations


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_summary(metrics: dict) -> str:
    sizes = metrics.get("split_sizes", {})
    test_on = metrics.get("test_on", "test")
    lines = [
        f"tlbench: {metrics.get('dataset')} | {metrics.get('backbone')} ({metrics.get('weights')}) | "
        f"split train/val/test = {sizes.get('train')}/{sizes.get('val')}/{sizes.get('test')}",
    ]
    if test_on != "test":
        lines.append("note: no test split in this dataset; the 'test' numbers below are measured on the validation split")
    lines.append(f"{'phase':<9} {'epochs':>6} {'train_s':>8} {'val_acc':>8} {'test_acc':>9} {'95% CI (' + metrics.get('phases', {}).get('head', metrics.get('phases', {}).get('finetune', {})).get('test_acc_ci_method', 'wilson') + ')':>18} {'macro_F1':>9}")
    for phase, values in metrics.get("phases", {}).items():
        ci = values.get("test_acc_ci95") or [None, None]
        lines.append(
            f"{phase:<9} {values.get('epochs', '-'):>6} {_fmt(values.get('train_seconds'), 1):>8} {_fmt(values.get('val_acc')):>8} "
            f"{_fmt(values.get('test_acc')):>9} {'[' + _fmt(ci[0]) + ', ' + _fmt(ci[1]) + ']':>18} {_fmt(values.get('test_macro_f1')):>9}"
        )
    if metrics.get("comparison"):
        lines.append(f"head vs finetune: {metrics['comparison'].get('verdict', '')}")
    lines.append(f"outputs: {metrics.get('run_dir')} (metrics.json, predictions_*.csv, split.csv, TensorBoard events)")
    lines.append(f"checkpoints: {metrics.get('checkpoint_dir')}")
    return "\n".join(lines)
