"""The phase boundary and per-phase checkpoints.

Lightning's ``BaseFinetuning`` adds parameter groups to the running optimizer and leaves frozen BatchNorm in
training mode; the study's recipe instead changes optimizer and learning rate at the boundary. So the
boundary here swaps in a fresh optimizer built by the module for the new phase, and the module owns which
parameters and BatchNorm layers train (see ``TransferLearningModule.apply_phase``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from weakref import proxy

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.strategies import DDPStrategy

from tlbench.callbacks.feature_cache import FeatureCaching
from tlbench.errors import TLBenchError
from tlbench.io import fsync_replace


def checkpoint_dir(trainer: pl.Trainer) -> Path:
    """``<root>/checkpoints/<experiment>/version_N``, mirroring the logger's ``lightning_logs/<experiment>/version_N``."""
    logger = trainer.logger
    if logger is None:
        return Path(trainer.default_root_dir) / "checkpoints"
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return Path(trainer.default_root_dir) / "checkpoints" / str(logger.name) / version


def head_phase_snapshot(checkpoint: dict) -> dict:
    """A copy of a head-phase checkpoint that later steps cannot change. The frozen backbone's tensors stay
    bit-identical until the phase ends (tested) and are shared rather than copied: for efficientnet_lite0 that
    copies the 5 MB head instead of 19 MB every epoch the validation loss improves."""
    state = checkpoint["state_dict"]
    changing = copy.deepcopy({**checkpoint, "state_dict": {k: v for k, v in state.items() if not k.startswith("backbone.")}})
    changing["state_dict"] = {k: state[k] if k.startswith("backbone.") else changing["state_dict"][k] for k in state}
    return changing


def caches_features(trainer: pl.Trainer, epoch: int) -> bool:
    """Whether epoch ``epoch`` trains the head on cached features, as ``FeatureCaching`` schedules it."""
    caching = FeatureCaching.attached_to(trainer)
    return caching is not None and caching.caches_features(epoch)


class PhaseSchedule(pl.Callback):
    """Switch from the head phase to the fine-tune phase after ``head_epochs`` epochs."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.phase == "head" and trainer.current_epoch >= pl_module.hparams.head_epochs:
            pl_module.apply_phase("finetune")
            if isinstance(trainer.strategy, DDPStrategy):
                # DDP registers the parameters that need gradients when it wraps the model: wrap again.
                trainer.strategy.model = trainer.strategy._setup_model(trainer.strategy.lightning_module)
            trainer.strategy.setup_optimizers(trainer)


class PhaseCheckpoint(ModelCheckpoint):
    """Best checkpoint (lowest val_loss) of one phase, or, with ``phase=None``, ``last.ckpt`` after every epoch.

    Selection uses validation only; the test split is evaluated once per phase after training. A non-finite
    val_loss is never "best" (ModelCheckpoint ranks NaN last). Best checkpoints hold weights only (evaluation,
    export and classify need nothing else); ``last.ckpt`` holds the full training state for resuming. Epochs of
    a head phase on cached features take milliseconds, far less than writing a checkpoint, so ``last.ckpt`` is
    written only at that phase's end and the phase's best checkpoint is kept in memory until then (Ctrl-C writes
    it too): a crash inside it repeats a few seconds of work. Files are written under
    a temporary name and renamed, so a kill during the write leaves the previous checkpoint loadable.
    """

    def __init__(self, phase: str | None, dirpath: str | None = None) -> None:
        if phase is None:
            super().__init__(dirpath=dirpath, filename="last", save_top_k=1, monitor=None, enable_version_counter=False)
        else:
            super().__init__(dirpath=dirpath, filename=f"{phase}-best-epoch{{epoch:02d}}", monitor="val_loss", mode="min",
                             save_top_k=1, auto_insert_metric_name=False, save_weights_only=True)
        self.phase = phase
        self._pending: tuple[str, dict] | None = None

    @property
    def state_key(self) -> str:
        return f"PhaseCheckpoint[{self.phase or 'last'}]"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = str(checkpoint_dir(trainer))
        super().setup(trainer, pl_module, stage)

    def _should_skip_saving_checkpoint(self, trainer: pl.Trainer) -> bool:
        module = trainer.lightning_module
        wrong_phase = self.phase is not None and module.phase != self.phase
        epoch = trainer.current_epoch
        cheap_epoch = self.phase is None and caches_features(trainer, epoch) and caches_features(trainer, epoch + 1)
        return wrong_phase or cheap_epoch or super()._should_skip_saving_checkpoint(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """On Ctrl-C, write ``last.ckpt`` with the progress so far (Lightning then exits with status 1).

        Other exceptions (a NaN loss, a full disk) keep the previous ``last.ckpt``: it is the last good state.
        """
        if self.phase is None and isinstance(exception, KeyboardInterrupt):
            self._save_checkpoint(trainer, self.format_checkpoint_name(self._monitor_candidates(trainer)))
        if isinstance(exception, KeyboardInterrupt):
            self._flush(trainer)

    def _defers_writes(self, trainer: pl.Trainer) -> bool:
        """Best checkpoints of a head phase on cached features stay in memory until the phase ends."""
        return self.phase is not None and caches_features(trainer, trainer.current_epoch)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if self._defers_writes(trainer):
            self._pending = (filepath, head_phase_snapshot(trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only)))
        else:
            self._write(trainer, filepath, trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only))
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def _write(self, trainer: pl.Trainer, filepath: str, checkpoint: dict) -> None:
        partial = f"{filepath}.partial"
        try:
            trainer.strategy.save_checkpoint(checkpoint, partial)
            if trainer.is_global_zero:
                fsync_replace(partial, filepath)
        except OSError as error:
            Path(partial).unlink(missing_ok=True)
            raise TLBenchError(f"could not write checkpoint {filepath}: {error.strerror or error}; free disk space and resume with --ckpt_path last") from None
        trainer.strategy.barrier("tlbench_checkpoint_rename")

    def _flush(self, trainer: pl.Trainer) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._write(trainer, *pending)

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if self._pending is not None and self._pending[0] == filepath:
            self._pending = None
        elif Path(filepath).exists():
            super()._remove_checkpoint(trainer, filepath)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not caches_features(trainer, trainer.current_epoch + 1):
            self._flush(trainer)
