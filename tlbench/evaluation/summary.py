"""The summary printed at the end of ``fit``: one line per phase, numbers with their uncertainty."""

from __future__ import annotations


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _interval(values: dict, key: str) -> str:
    lo, hi = values.get(key) or [None, None]
    return f"[{_fmt(lo)}, {_fmt(hi)}]"


def _report_files(metrics: dict) -> str:
    """The report files of the run, named once as ``<phase>`` patterns so the line stays short."""
    phases = metrics.get("phases", {})
    names = []
    for phase, values in phases.items():
        names += [
            name.replace(phase, "<phase>")
            for name in values.get("artifacts", {}).values()
            if name.replace(phase, "<phase>") not in names
        ]
    names += list(metrics.get("artifacts", {}).values())
    if not names:
        return ""
    tta = " (+ _tta for the TTA predictions)" if any(values.get("tta") for values in phases.values()) else ""
    return f"reports: {', '.join(names)} with <phase> = {'/'.join(phases)}{tta}"


def format_summary(metrics: dict) -> str:
    sizes = metrics.get("split_sizes", {})
    test_on = metrics.get("test_on", "test")
    phases = metrics.get("phases", {})
    final = (metrics.get("final") or {}).get("phase")
    selection = sizes.get("select", 0)
    names = ("train", "select", "val", "test") if selection else ("train", "val", "test")
    lines = [
        f"tlbench: {metrics.get('dataset')} | {metrics.get('backbone')} ({metrics.get('weights')}) | "
        f"split {'/'.join(names)} = {'/'.join(str(sizes.get(name)) for name in names)}",
    ]
    if test_on != "test" and selection:
        lines.append(
            f"note: no test split in this dataset; checkpoints and the final phase were chosen on 'select'"
            f" ({selection} images held out of train); the 'test' numbers below are the official val split,"
            " untouched by selection"
        )
    elif test_on != "test":
        lines.append(
            "note: no test split in this dataset; the 'test' numbers below are measured on the validation split"
        )
    if metrics.get("selection_from_train"):
        chooser = "select" if selection else "val"
        lines.append(
            f"note: '{chooser}' (which chose the checkpoints and the final phase) was carved from train, so it follows"
            f" the training distribution; if '{test_on}' comes from elsewhere, its accuracy may differ from"
            f" {chooser}'s and the phase chosen on {chooser} loss need not be the better one there"
        )
    method = phases.get("head", phases.get("finetune", {})).get("test_acc_ci_method", "wilson")
    lines.append(
        f"{'phase':<16} {'epochs':>6} {'train_s':>8} {'sel_acc' if selection else 'val_acc':>8} {'test_acc':>9}"
        f" {'95% CI (' + method + ')':>18} "
        f"{'macro_F1':>9} {'95% CI (bootstrap)':>19}"
    )
    for phase, values in phases.items():
        rows = [(phase, values), *([(f"{phase}+tta", values["tta"])] if values.get("tta") else [])]
        for name, row in rows:
            name = f"{name} (final)" if name == final else name
            lines.append(
                f"{name:<16} {values.get('epochs', '-'):>6} {_fmt(values.get('train_seconds'), 1):>8}"
                f" {_fmt(values.get('val_acc')):>8} "
                f"{_fmt(row.get('test_acc')):>9} {_interval(row, 'test_acc_ci95'):>18}"
                f" {_fmt(row.get('test_macro_f1')):>9} "
                f"{_interval(row, 'test_macro_f1_ci95'):>19}"
            )
    if metrics.get("comparison"):
        lines.append(f"head vs finetune: {metrics['comparison'].get('verdict', '')}")
    if final:
        lines.append(f"final model: {final} ({metrics['final'].get('why', '')})")
    lines.append(f"outputs: {metrics.get('run_dir')} (metrics.json, predictions_*.csv, split.csv, TensorBoard events)")
    reports = _report_files(metrics)
    if reports:
        lines.append(reports)
    lines.append(f"checkpoints: {metrics.get('checkpoint_dir')}")
    return "\n".join(lines)
