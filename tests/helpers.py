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


class InterruptAtStep(pl.Callback):
    """Deliver a real SIGINT (Ctrl-C) to this process after training step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class PoisonHeadAtEpoch(pl.Callback):
    """Fill the head's weights with NaN when epoch ``epoch`` starts: a diverged run."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            for parameter in pl_module.head.parameters():
                parameter.data.fill_(float("nan"))


class DiskFullAtEpoch(pl.Callback):
    """From epoch ``epoch`` on, every checkpoint write fails with ENOSPC, as on a full disk."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            import errno

            def full(*args, **kwargs):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            trainer.strategy.save_checkpoint = full


class AssertRanksInSync(pl.Callback):
    """Fail the run if any process's weights differ from rank zero's at the end of training (DDP only)."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import torch

        sums = torch.stack([p.detach().double().sum() for p in pl_module.parameters()])
        gathered = trainer.strategy.all_gather(sums)
        if not torch.allclose(gathered, gathered[0].expand_as(gathered), rtol=0, atol=1e-6):
            raise RuntimeError("DDP processes hold different weights after training")
