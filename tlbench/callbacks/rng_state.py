"""``RandomState``: the process-wide random streams a fit draws from while it trains (PyTorch's, CUDA's, NumPy's and
Python's: dropout, stochastic depth, Mixup/CutMix), owned so that a resumed fit is the same run as an uninterrupted
one with the same seed.

Every training epoch starts with these streams seeded from the run's seed, the epoch and the process's rank. An
epoch's draws then depend on nothing before it: not on how many draws earlier epochs made in this process or in a
killed one, nor on checkpoint loading, feature caching or validation in between. A fit resumed from the end of an
epoch (``last.ckpt``; a kill while it is written leaves the previous one whole, see ``CrashSafeCheckpointIO``)
trains its next epoch exactly as the uninterrupted fit did.

A checkpoint also carries the streams as they stood when it was written: a fit interrupted inside an epoch (Ctrl-C
writes ``last.ckpt`` there) continues them from its next batch, the batch where the datamodule's
``ResumableLoader`` resumes. The training order and each image's augmentation never draw from these streams: the
datamodule derives them from its own copy of the seed (``EpochOrder``).
"""

from __future__ import annotations

import random

import numpy as np
import pytorch_lightning as pl
import torch

from tlbench.data.datamodule import PROCESS_STREAMS, derived_seed, run_seed


def capture_streams() -> dict:
    """The process-wide streams, in types a ``weights_only`` checkpoint load accepts (no NumPy arrays)."""
    name, key, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": (name, key.tolist(), position, has_gauss, gauss),
        "python": random.getstate(),
    }


def restore_streams(streams: dict) -> None:
    """Put back what ``capture_streams`` returned; CUDA's only on as many devices as it was captured on."""
    torch.set_rng_state(streams["torch"].cpu())
    if streams["cuda"] and len(streams["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([state.cpu() for state in streams["cuda"]])
    name, key, position, has_gauss, gauss = streams["numpy"]
    np.random.set_state((name, np.array(key, dtype=np.uint32), position, has_gauss, gauss))
    version, internal, gauss = streams["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_streams(seed: int) -> None:
    torch.manual_seed(seed)  # the CPU generator and every CUDA device's
    np.random.seed(seed)
    random.seed(seed)


class RandomState(pl.Callback):
    def __init__(self) -> None:
        self.seed: int | None = None
        self._resumed_streams: dict | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.seed = run_seed()  # a resumed fit then loads the checkpoint's: callback states load after setup

    def state_dict(self) -> dict:
        return {"seed": self.seed, "streams": capture_streams()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.seed = state_dict["seed"]
        self._resumed_streams = state_dict["streams"]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seed_streams(derived_seed(self.seed, PROCESS_STREAMS, trainer.current_epoch, trainer.global_rank))
        self._resumed_streams = None  # the checkpoint was written at an epoch's end: this epoch starts afresh

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        """Resuming inside an epoch, Lightning skips ``on_train_epoch_start``: the first batch continues the
        interrupted run's streams instead."""
        if self._resumed_streams is not None:
            restore_streams(self._resumed_streams)
            self._resumed_streams = None
