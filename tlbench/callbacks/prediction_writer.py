"""``PredictionCSVWriter``: what ``tlbench predict`` computes, written as ``predictions_predict.csv``.

The table has the layout of the test's ``predictions_<phase>.csv`` (``recorder.predictions_table``): for the test
split with its true labels, for ``--data.predict_dir`` images with predictions only. It is written beside the run
that trained the checkpoint when predicting from one (``--ckpt_path checkpoints/<exp>/version_N/...ckpt``), else
in the logger's directory, and its path is printed.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from tlbench.callbacks.recorder import predictions_table
from tlbench.io import write_csv
from tlbench.rundir import run_dir, run_dir_of_checkpoint

PREDICTIONS_FILE = "predictions_predict.csv"


class PredictionCSVWriter(BasePredictionWriter):
    """Collects each batch's probabilities (``predict_step``), labels and row indices, and writes the table once."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self._batches: list[dict[str, torch.Tensor]] = []

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batches = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        """Keep the batch; its labels (-1 for ``predict_dir`` images) come from the loader's ``(image, label, row)``."""
        self._batches.append({**{key: value.cpu() for key, value in prediction.items()}, "targets": batch[1].cpu()})

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        outputs = {key: torch.cat([batch[key] for batch in self._batches]) for key in ("probs", "rows", "targets")}
        if trainer.world_size > 1:  # each process predicted its own share of the files, of unequal sizes
            shares: list[dict | None] = [None] * trainer.world_size
            torch.distributed.all_gather_object(shares, outputs)
            outputs = {key: torch.cat([share[key] for share in shares]) for key in outputs}
        if not trainer.is_global_zero:
            return
        order = torch.argsort(outputs["rows"])
        probs, rows, targets = (outputs[key][order] for key in ("probs", "rows", "targets"))
        datamodule = trainer.datamodule
        known = None if datamodule.predict_dir else targets
        table = predictions_table(probs, known, rows, datamodule.predict_rows(), pl_module.classes)
        folder = (run_dir_of_checkpoint(trainer.ckpt_path) if trainer.ckpt_path else None) or run_dir(trainer)
        print(f"wrote {write_csv(folder / PREDICTIONS_FILE, table).resolve()} ({len(table)} image(s))")
