"""The phase boundary, the learning rate within each phase, and per-phase checkpoints.

Lightning's ``BaseFinetuning`` adds parameter groups to the running optimizer and leaves frozen BatchNorm in
training mode; the study's recipe instead changes optimizer and learning rate at the boundary. So the
boundary here swaps in a fresh optimizer built by the module for the new phase, and the module owns which
parameters and BatchNorm layers train (see ``TransferLearningModule.apply_phase``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.utilities import rank_zero_info

from tlbench.callbacks.checkpoint_io import CrashSafeCheckpointIO
from tlbench.callbacks.feature_cache import FeatureCaching
from tlbench.errors import TLBenchError
from tlbench.rundir import checkpoint_dir


def cheap_epoch(trainer: pl.Trainer) -> bool:
    """Whether this epoch and the next train the head on cached features (as ``FeatureCaching`` schedules them):
    epochs of milliseconds, whose checkpoints are not worth writing at once."""
    caching = FeatureCaching.attached_to(trainer)
    epoch = trainer.current_epoch
    return caching is not None and caching.caches_features(epoch) and caching.caches_features(epoch + 1)


def schedule_factor(position: float, step: float, epochs: int, warmup: float, cosine: bool) -> float:
    """Learning-rate multiplier of the batch starting ``position`` epochs into a phase (``step``: one batch, in
    epochs): a linear warmup from ``step / warmup`` to 1 over the first ``warmup`` epochs, then constant or a cosine
    decay reaching zero at the phase's end (``epochs``). Per batch, not per epoch: a one-epoch warmup of 28 batches
    climbs in 28 steps, not in one jump to half the rate."""
    if position < warmup:
        return min(1.0, (position + step) / warmup)
    if not cosine:
        return 1.0
    progress = min(1.0, (position - warmup) / max(step, epochs - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress))


LIGHTNING_DEFAULT_MAX_EPOCHS = 1000  # what Lightning sets when max_epochs is left unset


class PhaseSchedule(pl.Callback):
    """Switch from the head phase to the fine-tune phase at the module's ``finetune_start`` epoch, and end each phase
    early once its patience (``head_patience``, ``finetune_patience``) runs out.

    Patience counts validations without a lower val_loss than the phase's best so far. A head phase that runs out
    moves ``finetune_start`` to the next epoch (the module keeps it, checkpoints with it, and ``FeatureCaching`` and
    ``PhaseCheckpoint`` read it), and the epoch budget shrinks by the head epochs left; a fine-tune phase that runs
    out ends the fit. Lightning's ``EarlyStopping`` cannot do this: it can only stop the whole fit
    (``trainer.should_stop``), and its best score would carry over the boundary, where the loss starts afresh.
    The best loss and stale count are this callback's state, so a resumed run keeps counting where it was killed.
    """

    def __init__(self) -> None:
        self.best_loss = math.inf
        self.stale_validations = 0

    def state_dict(self) -> dict:
        return {"best_loss": self.best_loss, "stale_validations": self.stale_validations}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_loss = state_dict.get("best_loss", math.inf)
        self.stale_validations = state_dict.get("stale_validations", 0)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """The schedule owns the epoch budget: ``max_epochs`` is ``head_epochs + finetune_epochs``, the latter fixed
        here by the budget rule when left to it (``plan_finetune``; the datamodule has split the data by now).
        Lightning's default (unset, 1000) is replaced; any other value that disagrees is refused rather than
        trained."""
        if stage != "fit":
            return
        if pl_module.hparams.finetune_epochs is None:
            epochs = pl_module.plan_finetune(sum(trainer.datamodule.train_class_counts()))
            rank_zero_info(f"fine-tuning {epochs} epochs: --model.budget {pl_module.hparams.budget}'s rule")
        total = pl_module.total_epochs
        if trainer.max_epochs == total:
            return
        if trainer.max_epochs not in (-1, LIGHTNING_DEFAULT_MAX_EPOCHS):
            raise TLBenchError(
                f"Trainer(max_epochs={trainer.max_epochs}) disagrees with head_epochs + finetune_epochs = {total}; "
                "set the epochs on the module (head_epochs, finetune_epochs) and leave max_epochs unset"
            )
        trainer.fit_loop.max_epochs = total

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A resumed run whose head phase stopped early keeps its shorter budget (checkpoints are restored after
        ``setup``)."""
        self._fit_budget(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.phase == "head" and trainer.current_epoch >= pl_module.finetune_start:
            pl_module.apply_phase("finetune")
            self.best_loss, self.stale_validations = math.inf, 0
            if isinstance(trainer.strategy, DDPStrategy):
                # DDP registers the parameters that need gradients when it wraps the model: wrap again.
                trainer.strategy.model = trainer.strategy.lightning_module
                trainer.strategy.configure_ddp()
            trainer.strategy.setup_optimizers(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Count this validation against the phase's patience. Runs before the checkpoints' own hook (Lightning
        orders checkpoint callbacks last), so the epoch that ends the head phase writes ``last.ckpt`` with the new
        boundary."""
        hp = pl_module.hparams
        patience = hp.head_patience if pl_module.phase == "head" else hp.finetune_patience
        loss = trainer.callback_metrics.get("val_loss")
        if trainer.sanity_checking or patience is None or loss is None:
            return
        if float(loss) < self.best_loss:
            self.best_loss, self.stale_validations = float(loss), 0
            return
        self.stale_validations += 1
        if self.stale_validations < patience:
            return
        if pl_module.phase == "head":
            pl_module.finetune_start = trainer.current_epoch + 1
            self._fit_budget(trainer, pl_module)
        else:
            trainer.should_stop = True

    @staticmethod
    def _fit_budget(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.fit_loop.max_epochs = pl_module.finetune_start + pl_module.hparams.finetune_epochs


class PhaseLearningRate(pl.Callback):
    """The learning rate of every training batch: each parameter group's ``peak_lr`` (see
    ``TransferLearningModule.configure_optimizers``) times ``schedule_factor`` of where the batch stands in its
    phase — warmup over ``head_warmup_epochs`` / ``warmup_epochs``, then ``lr_schedule`` over the phase's epochs.

    Set per batch rather than per epoch because a phase of a few epochs is a few dozen steps: an epoch-stepped
    warmup would start the fine-tune phase at half its rate, enough to wreck a head trained on frozen features.
    The position is read from the trainer (epoch, batch index), so there is no state to checkpoint and a resumed
    fit continues the same curve.
    """

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        hp = pl_module.hparams
        head = pl_module.phase == "head"
        epochs = hp.head_epochs if head else hp.finetune_epochs
        warmup = hp.head_warmup_epochs if head else hp.warmup_epochs
        first_epoch = 0 if head else pl_module.finetune_start
        step = 1 / max(1, trainer.num_training_batches)
        position = trainer.current_epoch - first_epoch + batch_idx * step
        factor = schedule_factor(position, step, epochs, warmup, hp.lr_schedule == "cosine")
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["peak_lr"] * factor


class PhaseCheckpoint(ModelCheckpoint):
    """Best checkpoint (lowest val_loss) of one phase, or, with ``phase=None``, ``last.ckpt`` after every epoch.

    Selection uses validation only; the test split is evaluated once per phase after training. A non-finite
    val_loss is never "best" (ModelCheckpoint ranks NaN last). Best checkpoints hold weights only (evaluation,
    export and classify need nothing else); ``last.ckpt`` holds the full training state for resuming. Epochs of
    a head phase on cached features take milliseconds, far less than writing a checkpoint, so ``last.ckpt`` is
    written only at that phase's end and the phase's best checkpoint is kept in memory until then (Ctrl-C writes
    it too): a crash inside it repeats a few seconds of work. Files are written under a temporary name and
    renamed, so a kill during the write leaves the previous checkpoint loadable (see ``CrashSafeCheckpointIO``).

    Only public Lightning API: the saving logic stays ``ModelCheckpoint``'s, this class decides in the public
    epoch hooks whether it runs at all, and writes go through ``trainer.strategy.checkpoint_io``.
    """

    def __init__(self, phase: str | None, dirpath: str | None = None) -> None:
        if phase is None:
            super().__init__(dirpath=dirpath, filename="last", save_top_k=1, monitor=None, enable_version_counter=False)
        else:
            super().__init__(
                dirpath=dirpath,
                filename=f"{phase}-best-epoch{{epoch:02d}}",
                monitor="val_loss",
                mode="min",
                save_top_k=1,
                auto_insert_metric_name=False,
                save_weights_only=True,
            )
        self.phase = phase

    @property
    def state_key(self) -> str:
        return f"PhaseCheckpoint[{self.phase or 'last'}]"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = str(checkpoint_dir(trainer))
        super().setup(trainer, pl_module, stage)
        if not isinstance(trainer.strategy.checkpoint_io, CrashSafeCheckpointIO):
            trainer.strategy.checkpoint_io = CrashSafeCheckpointIO(trainer.strategy.checkpoint_io)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._sits_out(trainer):
            with self._writing(trainer, defer=cheap_epoch(trainer)):
                super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._sits_out(trainer):
            with self._writing(trainer, defer=cheap_epoch(trainer)):
                super().on_validation_end(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """On Ctrl-C, write ``last.ckpt`` with the progress so far and any deferred best checkpoint. Other exceptions
        (a NaN loss, a full disk) keep the previous ``last.ckpt``: it is the last good state. An interrupt before
        ``setup`` (while the run is still being set up) has no progress to keep."""
        if not isinstance(exception, KeyboardInterrupt) or not isinstance(
            trainer.strategy.checkpoint_io, CrashSafeCheckpointIO
        ):
            return
        with self._writing(trainer, defer=False):
            if self.phase is None:
                path = self.format_checkpoint_name({})
                trainer.save_checkpoint(path, weights_only=False)
                rank_zero_info(
                    f"progress saved to {path} (epoch {trainer.current_epoch}, step {trainer.global_step});"
                    " resume with --ckpt_path last"
                )

    def _sits_out(self, trainer: pl.Trainer) -> bool:
        """Another phase's best checkpoint, or ``last.ckpt`` during a cheap epoch."""
        if self.phase is not None:
            return trainer.lightning_module.phase != self.phase
        return cheap_epoch(trainer)

    @contextmanager
    def _writing(self, trainer: pl.Trainer, defer: bool) -> Iterator[None]:
        """Checkpoints saved inside stay in memory (``defer``) or are written, the deferred ones with them; a failed
        write becomes one line naming the file."""
        io = trainer.strategy.checkpoint_io
        io.deferring = defer
        try:
            yield
            if not defer:
                io.flush()
        except OSError as error:
            where = error.filename or self.dirpath
            raise TLBenchError(
                f"could not write checkpoint {where}: {error.strerror or error}; "
                "free disk space and resume with --ckpt_path last"
            ) from None
        finally:
            io.deferring = False
