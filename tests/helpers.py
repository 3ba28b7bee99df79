"""Callbacks used by tests through ``--trainer.callbacks``, as a user would add their own."""

import os
import signal
import time
from pathlib import Path

import pytorch_lightning as pl


class KillAtEpochStart(pl.Callback):
    """SIGKILL this process when epoch ``epoch`` starts: a real crash, after the previous epoch's checkpoint."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class PauseAtStep(pl.Callback):
    """After training step ``step``, create ``marker`` and wait there for a signal (at most ``seconds``).

    A fault test sends the signal once the marker exists: the interrupt then always lands in this wait, at a
    known step, instead of racing the training loop (a signal handled inside a finaliser is silently dropped).
    """

    def __init__(self, step: int, marker: str, seconds: float = 300) -> None:
        self.step = step
        self.marker = marker
        self.seconds = seconds

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            Path(self.marker).touch()
            time.sleep(self.seconds)
            raise RuntimeError(f"no signal came within {self.seconds} s of step {self.step}")


class InterruptAtSetup(pl.Callback):
    """Ctrl-C while the run is being set up (before tlbench's checkpoint writer is in place): Lightning's graceful
    shutdown then runs with no training progress to keep."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        raise KeyboardInterrupt


class PoisonHeadAtEpoch(pl.Callback):
    """Fill the head's weights with NaN when epoch ``epoch`` starts: a diverged run."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            for parameter in pl_module.head.parameters():
                parameter.data.fill_(float("nan"))


class DiskFullAtEpoch(pl.Callback):
    """From epoch ``epoch`` on, the disk fills up halfway through every checkpoint file: the bytes written so far
    stay in the file being written, then the write fails with ENOSPC. Only the serialiser is replaced, so
    tlbench's crash-safe writer (temporary name, rename, clean-up) runs as it does on a real full disk."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            import errno
            import io

            import torch

            writer = trainer.strategy.checkpoint_io.inner

            def fill_disk(checkpoint, path, storage_options=None):
                buffer = io.BytesIO()
                torch.save(checkpoint, buffer)
                Path(path).write_bytes(buffer.getvalue()[: buffer.tell() // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

            writer.save_checkpoint = fill_disk


class AssertRanksInSync(pl.Callback):
    """Fail the run if any process's weights differ from rank zero's at the end of training (DDP only)."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import torch

        sums = torch.stack([p.detach().double().sum() for p in pl_module.parameters()])
        gathered = trainer.strategy.all_gather(sums)
        if not torch.allclose(gathered, gathered[0].expand_as(gathered), rtol=0, atol=1e-6):
            raise RuntimeError("DDP processes hold different weights after training")


class NoDirLogger(pl.loggers.Logger):
    """A logger with ``log_dir`` None, like MLflow's, Weights & Biases' or Comet's: it records what it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[dict] = []

    @property
    def name(self) -> str:
        return "nodir"

    @property
    def version(self) -> int:
        return 0

    @property
    def log_dir(self) -> None:
        return None

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.logged.append(dict(metrics))


class StartTogether(pl.Callback):
    """Built with the trainer, before ``fit``: wait there until ``count`` processes have come (at most ``seconds``),
    each marking itself in ``folder``.

    Fits then go on together into the stretch where each one's run folder is chosen and first written (the data
    pre-flight writes its reports there before any callback's ``setup``), instead of one a second ahead.
    """

    def __init__(self, folder: str, count: int, seconds: float = 120) -> None:
        super().__init__()
        folder_path = Path(folder)
        folder_path.mkdir(parents=True, exist_ok=True)
        (folder_path / str(os.getpid())).touch()
        deadline = time.monotonic() + seconds
        while len(list(folder_path.iterdir())) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} fits did not all start within {seconds} s")
            time.sleep(0.01)


class KillAtStep(pl.Callback):
    """SIGKILL this process as training step ``step`` is about to run: a crash at a chosen step, wherever it falls
    in an epoch (the resumed run repeats the steps since its ``last.ckpt``)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillDuringCheckpointWrite(pl.Callback):
    """SIGKILL this process halfway through writing its ``nth`` ``last.ckpt`` (counting from 1): half the
    checkpoint's bytes are on disk under the crash-safe writer's temporary name and the rename never happens.

    The writer ``PhaseCheckpoint`` installs (``CrashSafeCheckpointIO``) is kept; only the file writer inside it is
    wrapped, from ``on_fit_start`` (after every callback's ``setup``), so the kill lands inside the real write path.
    """

    def __init__(self, nth: int) -> None:
        self.nth = nth

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = trainer.strategy.checkpoint_io
        writer.inner = _HalfWriteThenKill(writer.inner, self.nth)


class _HalfWriteThenKill(pl.plugins.CheckpointIO):
    def __init__(self, inner: pl.plugins.CheckpointIO, nth: int) -> None:
        self.inner = inner
        self.nth = nth
        self.last_writes = 0

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if Path(path).name.startswith("last.ckpt"):
            self.last_writes += 1
            if self.last_writes == self.nth:
                import io

                import torch

                buffer = io.BytesIO()
                torch.save(checkpoint, buffer)
                data = buffer.getvalue()
                with open(path, "wb") as stream:
                    stream.write(data[: len(data) // 2])
                    stream.flush()
                    os.fsync(stream.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
        self.inner.save_checkpoint(checkpoint, path, storage_options)

    def load_checkpoint(self, path, *args, **kwargs) -> dict:
        return self.inner.load_checkpoint(path, *args, **kwargs)

    def remove_checkpoint(self, path) -> None:
        self.inner.remove_checkpoint(path)
