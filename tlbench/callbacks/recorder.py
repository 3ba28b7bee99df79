"""``RunRecorder``: the run directory contract (split.csv, history.csv, predictions_<phase>.csv, metrics.json).

Each tested phase also gets its evaluation report (``evaluation.runs.evaluate_phase``: classification report,
confusion matrix, reliability diagram, top losses with Grad-CAM overlays when Captum is installed), and with
``--model.tta true`` a second, separately named set for the test-time-augmented predictions.

Phase times and the epoch history are part of the callback state, so a resumed run reports the time and
curves of the whole run, not of the part after the restart.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger

from tlbench.evaluation.runs import evaluate_phase
from tlbench.io import write_csv
from tlbench.models.gradcam import overlays_of
from tlbench.rundir import checkpoint_dir, run_dir, update_metrics, write_metrics

HISTORY_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc")


def predictions_table(
    probs: torch.Tensor, targets: torch.Tensor | None, rows: torch.Tensor, split_rows: pd.DataFrame, classes: list[str]
) -> pd.DataFrame:
    """One row per image: path (and split), true label when ``targets`` are known, predicted label, top-k labels
    with probabilities, every class probability."""
    k = min(5, len(classes))
    top_probs, top_index = probs.topk(k, dim=1)
    columns = [column for column in ("path", "split") if column in split_rows]
    table = split_rows[columns].iloc[rows.tolist()].reset_index(drop=True)
    if targets is not None:
        table["true_label"] = [classes[i] for i in targets.tolist()]
    table["pred_label"] = [classes[i] for i in top_index[:, 0].tolist()]
    if targets is not None:
        table["correct"] = (table.true_label == table.pred_label).astype(int)
    for rank in range(k):
        table[f"top{rank + 1}_label"] = [classes[i] for i in top_index[:, rank].tolist()]
        table[f"top{rank + 1}_prob"] = top_probs[:, rank].tolist()
    for index, name in enumerate(classes):
        table[f"prob_{name}"] = probs[:, index].tolist()
    return table


class RunRecorder(pl.Callback):
    def __init__(self) -> None:
        self.phase_seconds: dict[str, float] = {}
        self.phase_epochs: dict[str, int] = {}
        self.history: list[dict] = []
        self._epoch_start = 0.0
        self._validation_start = 0.0
        self._validation_seconds = 0.0

    def state_dict(self) -> dict:
        return {"phase_seconds": self.phase_seconds, "phase_epochs": self.phase_epochs, "history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.phase_seconds = dict(state_dict.get("phase_seconds", {}))
        self.phase_epochs = dict(state_dict.get("phase_epochs", {}))
        self.history = list(state_dict.get("history", []))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        if trainer.is_global_zero:
            write_csv(run_dir(trainer) / "split.csv", trainer.datamodule.table)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validation_seconds += time.perf_counter() - self._validation_start

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Epoch time runs from the previous epoch's end, so dataloader (re)building and feature caching count;
        ``val_seconds`` is the part of it spent validating, so training throughput can be read off apart."""
        phase = pl_module.phase
        start, now = self._epoch_start, time.perf_counter()
        self.phase_seconds[phase] = self.phase_seconds.get(phase, 0.0) + now - start
        self._epoch_start = now
        self.phase_epochs[phase] = self.phase_epochs.get(phase, 0) + 1
        metrics = trainer.callback_metrics
        entry = {
            "epoch": trainer.current_epoch,
            "phase": phase,
            "seconds": round(now - start, 3),
            "val_seconds": round(self._validation_seconds, 3),
        }
        self._validation_seconds = 0.0
        entry.update({key: float(metrics[key]) for key in HISTORY_KEYS if key in metrics})
        self.history.append(entry)
        if trainer.is_global_zero:
            write_csv(run_dir(trainer) / "history.csv", pd.DataFrame(self.history))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        history = pd.DataFrame(self.history)
        phases = {}
        for callback in trainer.checkpoint_callbacks:
            phase = getattr(callback, "phase", None)
            if phase is None or not callback.best_model_path:
                continue
            in_phase = history[history.phase == phase]
            best_epoch = (
                int(in_phase.epoch[in_phase.val_loss.idxmin()])
                if in_phase.val_loss.notna().any()
                else int(in_phase.epoch.iloc[-1])
            )
            at_best = history[history.epoch == best_epoch]
            phases[phase] = {
                "epochs": self.phase_epochs.get(phase, 0),
                "train_seconds": round(self.phase_seconds.get(phase, 0.0), 2),
                "best_epoch": best_epoch,
                "val_acc": float(at_best.val_acc.iloc[0]) if len(at_best) and "val_acc" in at_best else None,
                "val_loss": float(at_best.val_loss.iloc[0]) if len(at_best) and "val_loss" in at_best else None,
                "best_ckpt": str(Path(callback.best_model_path).resolve()),
            }
        metrics = {
            "dataset": datamodule.dataset_name,
            "data_root": str(Path(datamodule.root).resolve()),
            "split_seed": datamodule.split_seed,
            "backbone": pl_module.hparams.backbone,
            "recipe": pl_module.hparams.recipe or pl_module.hparams.backbone,
            "weights": pl_module.weights_source,
            "preprocessing": pl_module.preprocessing.to_dict(),
            "classes": pl_module.classes,
            "split_sizes": datamodule.split_sizes(),
            "layout": datamodule.layout,
            "test_on": datamodule.test_on,
            "selection_from_train": datamodule.selection_from_train,
            "run_dir": str(run_dir(trainer).resolve()),
            "checkpoint_dir": str(checkpoint_dir(trainer).resolve()),
            "skipped": [{"path": path, "reason": reason} for path, reason in datamodule.skipped],
            "engine": dict(pl_module.engines_used),
            "phases": phases,
        }
        write_metrics(run_dir(trainer), metrics)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        outputs = pl_module.gathered_test_outputs()
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        table = datamodule.prepare_split()
        split_rows = table[table.split == datamodule.test_on].reset_index(drop=True)
        phase = pl_module.phase
        out = run_dir(trainer)
        phase_metrics = self._evaluate(trainer, outputs["probs"], outputs, split_rows, pl_module.classes, phase)
        phase_metrics["test_acc_ci_method"] = "wilson"
        if "tta_probs" in outputs:
            phase_metrics["tta"] = self._evaluate(
                trainer, outputs["tta_probs"], outputs, split_rows, pl_module.classes, f"{phase}_tta"
            )
        update = {"phases": {phase: phase_metrics}, "test_on": datamodule.test_on, "engine": pl_module.engines_used}
        update_metrics(out, update)
        self._log_confusion(trainer, out / phase_metrics["artifacts"]["confusion_plot"], phase)

    @staticmethod
    def _evaluate(
        trainer: pl.Trainer,
        probs: torch.Tensor,
        outputs: dict[str, torch.Tensor],
        split_rows: pd.DataFrame,
        classes: list[str],
        name: str,
    ) -> dict:
        """Write ``predictions_<name>.csv`` and its report files; the metrics, with the CSV's name under
        ``predictions``."""
        datamodule = trainer.datamodule
        predictions = predictions_table(
            probs.cpu(), outputs["targets"].cpu(), outputs["rows"].cpu(), split_rows, classes
        )
        out = run_dir(trainer)
        write_csv(out / f"predictions_{name}.csv", predictions)
        overlays = overlays_of(trainer.lightning_module)
        result = evaluate_phase(predictions, classes, out, name, datamodule.root, datamodule.test_on, overlays)
        return {**result, "predictions": f"predictions_{name}.csv"}

    @staticmethod
    def _log_confusion(trainer: pl.Trainer, png: Path, phase: str) -> None:
        """The confusion matrix in TensorBoard's Images tab, beside the scalars (only with a TensorBoard logger)."""
        if isinstance(trainer.logger, TensorBoardLogger):
            with Image.open(png) as image:
                pixels = np.asarray(image.convert("RGB"))
            trainer.logger.experiment.add_image(
                f"confusion/{phase}", pixels, global_step=trainer.global_step, dataformats="HWC"
            )
