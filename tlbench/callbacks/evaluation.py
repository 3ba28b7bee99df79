"""``TestBestPhases``: after ``fit``, test each phase's best checkpoint and finish the run directory.

It runs on every fit, however the trainer was built (``tlbench fit``, ``tlbench.fit``, or a plain
``Trainer().fit(module, datamodule)``): the module adds it through ``configure_callbacks``. Testing the best
checkpoint, not the last weights, keeps selection on the validation split; the test split is read once per
phase, after all training. ``RunRecorder`` writes each phase's predictions and reports as it is tested.
"""

from __future__ import annotations

import pytorch_lightning as pl

from tlbench.evaluation.runs import finish_run
from tlbench.evaluation.summary import format_summary
from tlbench.rundir import run_dir


class TestBestPhases(pl.Callback):
    def __init__(self, print_summary: bool = True) -> None:
        self.print_summary = print_summary

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Lightning calls this only when training finished (not on Ctrl-C or an error), after its own teardown,
        so ``trainer.test`` here runs as it would after ``fit`` returned."""
        best = [
            callback.best_model_path
            for callback in trainer.checkpoint_callbacks
            if getattr(callback, "phase", None) and callback.best_model_path
        ]
        for checkpoint in best:
            trainer.test(pl_module, datamodule=trainer.datamodule, ckpt_path=checkpoint, verbose=False)
        if trainer.is_global_zero:
            metrics = finish_run(run_dir(trainer))
            if self.print_summary:
                print(format_summary(metrics))
