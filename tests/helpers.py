"""Callbacks used by tests through ``--trainer.callbacks``, as a user would add their own."""

import os
import signal

import pytorch_lightning as pl


class KillAtEpochStart(pl.Callback):
    """SIGKILL this process when epoch ``epoch`` starts: a real crash, after the previous epoch's checkpoint."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)
