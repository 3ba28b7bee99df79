"""Evaluation wired into a run directory: per-phase reports when a phase is tested, run-level ones after fit.

``fit`` and ``test`` both go through ``evaluate_phase``, so a re-test of a checkpoint writes the same files and
the same numbers as the test at the end of training. Everything is computed from the prediction CSVs the run
already wrote (see ``artifacts``), never from the model, so the numbers in ``metrics.json`` can be checked
against those files.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tlbench.evaluation.artifacts import compare_phases, evaluate_predictions
from tlbench.evaluation.final import choose_final
from tlbench.evaluation.plots import Overlays, plot_learning_curves
from tlbench.io import read_csv
from tlbench.rundir import read_metrics, update_metrics

LEARNING_CURVES = "learning_curves.png"


def evaluate_phase(
    predictions: pd.DataFrame,
    classes: list[str],
    out_dir: Path,
    name: str,
    data_root: Path,
    split: str,
    overlays: Overlays | None = None,
) -> dict:
    """``evaluate_predictions`` on the tested ``split``, with metric keys always named ``test_*``.

    A dataset without a test folder is tested on ``val``; its metrics still go under ``test_*`` (the contract
    the summary and other commands read), and ``metrics.json["test_on"]`` says which split it really was.
    ``name`` names the files (``confusion_<name>.png``): the phase, or ``<phase>_tta``. ``overlays`` puts Grad-CAM
    heatmaps on the top-losses images.
    """
    result = evaluate_predictions(
        predictions, classes, out_dir, name, data_root=data_root, split=split, overlays=overlays
    )
    prefix = f"{split}_"
    return {(f"test_{key[len(prefix) :]}" if key.startswith(prefix) else key): value for key, value in result.items()}


def _boundary_epoch(history: pd.DataFrame) -> float | None:
    """Halfway between the last head epoch and the first fine-tune epoch; ``None`` for a one-phase run."""
    finetune = history.epoch[history.phase == "finetune"]
    if finetune.empty or not (history.phase == "head").any():
        return None
    return float(finetune.min()) - 0.5


def finish_run(run_dir: str | Path) -> dict:
    """After every phase was tested: learning curves, the head-vs-finetune comparison and the final model (the
    phase with the better validation loss, see ``final``), saved in metrics.json.

    The comparison is paired (same test images, McNemar and a paired bootstrap), which is the only honest way
    to say whether fine-tuning helped on a test set of a few dozen images. Returns the updated metrics.
    """
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    update: dict = {"artifacts": {}}
    history_path = run_dir / "history.csv"
    if history_path.is_file():
        history = read_csv(history_path)
        plot_learning_curves(history, run_dir / LEARNING_CURVES, _boundary_epoch(history))
        update["artifacts"]["learning_curves"] = LEARNING_CURVES
    phases = metrics.get("phases", {})
    if phases:
        update["final"] = choose_final(phases)
    if all(phases.get(phase, {}).get("predictions") for phase in ("head", "finetune")):
        head, finetune = (read_csv(run_dir / phases[phase]["predictions"]) for phase in ("head", "finetune"))
        update["comparison"] = compare_phases(head, finetune, split=metrics.get("test_on", "test"))
    return update_metrics(run_dir, update)
