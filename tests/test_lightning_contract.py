"""What tlbench relies on from Lightning beyond plain documented calls: each test fails loudly, naming the
behaviour, when a Lightning release changes it (instead of a run silently losing a checkpoint or validating on
stale features).

- ``PhaseCheckpoint`` defers and renames checkpoints in ``CrashSafeCheckpointIO``: every file ``ModelCheckpoint``
  writes or deletes must go through ``trainer.strategy.checkpoint_io``, and the strategy must keep the IO it is
  given.
- ``FeatureCaching`` changes ``trainer.reload_dataloaders_every_n_epochs`` during a fit: the loops must read it
  anew every epoch, the validation loader when validation starts.
- ``PhaseSchedule`` re-wraps the model for DDP at the phase boundary with ``DDPStrategy.configure_ddp()``.
"""

import inspect
import socket

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.demos.boring_classes import BoringModel
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.plugins.environments import LightningEnvironment
from pytorch_lightning.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel


def tiny_trainer(tmp_path, epochs: int, callbacks: list) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=2,
        limit_val_batches=1,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )


class RecordingCheckpointIO(TorchCheckpointIO):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        self.calls.append(("save", str(path)))
        super().save_checkpoint(checkpoint, path, storage_options)

    def remove_checkpoint(self, path) -> None:
        self.calls.append(("remove", str(path)))
        super().remove_checkpoint(path)


class InstallIO(pl.Callback):
    """Sets the IO the way ``PhaseCheckpoint.setup`` does: through the public ``strategy.checkpoint_io`` setter."""

    def __init__(self, io) -> None:
        self.io = io

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        trainer.strategy.checkpoint_io = self.io


class DecreasingLoss(BoringModel):
    """val_loss falls every epoch, so a top-1 ``ModelCheckpoint`` replaces (writes, then deletes) its file."""

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", 10.0 - self.current_epoch)


def test_model_checkpoint_writes_and_deletes_only_through_the_strategy_checkpoint_io(tmp_path):
    io = RecordingCheckpointIO()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpts", filename="best-{epoch}", monitor="val_loss", save_top_k=1)
    trainer = tiny_trainer(tmp_path, 3, [InstallIO(io), checkpoint])
    trainer.fit(DecreasingLoss())
    assert trainer.strategy.checkpoint_io is io, "Strategy.checkpoint_io no longer returns the IO it was given"
    paths = [str(tmp_path / "ckpts" / f"best-epoch={epoch}.ckpt") for epoch in range(3)]
    assert io.calls == [
        ("save", paths[0]),
        ("save", paths[1]),
        ("remove", paths[0]),
        ("save", paths[2]),
        ("remove", paths[1]),
    ], "ModelCheckpoint bypasses checkpoint_io"
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["best-epoch=2.ckpt"]


class ToggleReload(pl.Callback):
    """``FeatureCaching``'s use: rebuild loaders every epoch from the start, stop at the end of epoch ``until``."""

    def __init__(self, until: int) -> None:
        self.until = until

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.reload_dataloaders_every_n_epochs = 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.until:
            trainer.reload_dataloaders_every_n_epochs = 0


class CountLoaders(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.built: list[tuple[str, int]] = []

    def train_dataloader(self):
        self.built.append(("train", self.trainer.current_epoch))
        return super().train_dataloader()

    def val_dataloader(self):
        self.built.append(("val", self.trainer.current_epoch))
        return super().val_dataloader()


def test_reload_dataloaders_every_n_epochs_is_read_anew_every_epoch(tmp_path):
    model = CountLoaders()
    tiny_trainer(tmp_path, 4, [ToggleReload(until=1)]).fit(model)
    # Epoch 1 still gets fresh loaders, validation included (built when validation starts); epochs 2-3 keep them.
    assert model.built == [("train", 0), ("val", 0), ("train", 1), ("val", 1)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def one_process_group():
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def test_configure_ddp_wraps_the_lightning_module_again(one_process_group):
    assert list(inspect.signature(DDPStrategy.configure_ddp).parameters) == ["self"]
    strategy = DDPStrategy(
        accelerator=CPUAccelerator(),
        parallel_devices=[torch.device("cpu")],
        cluster_environment=LightningEnvironment(),
        process_group_backend="gloo",
    )
    model = BoringModel()
    strategy.connect(model)
    strategy.configure_ddp()
    first = strategy.model
    assert isinstance(first, DistributedDataParallel) and first.module is model
    strategy.model = strategy.lightning_module  # what PhaseSchedule does at the phase boundary
    strategy.configure_ddp()
    assert isinstance(strategy.model, DistributedDataParallel) and strategy.model is not first
    assert strategy.model.module is model and strategy.lightning_module is model


def test_the_private_subcommand_parser_hook_tlbench_overrides_keeps_its_signature():
    """TLBenchCLI overrides the private ``LightningCLI._prepare_subcommand_parser(klass, subcommand, **kwargs)`` to
    reword ``--ckpt_path`` and, through the ``description`` it passes on, predict's help;
    tests/test_cli.py::test_ckpt_path_help_says_what_tlbench_does_with_last and
    ::test_every_help_says_what_the_command_does_in_whole_sentences check the results through the real CLI."""
    import inspect

    from pytorch_lightning.cli import LightningCLI

    parameters = inspect.signature(LightningCLI._prepare_subcommand_parser).parameters
    assert list(parameters) == ["self", "klass", "subcommand", "kwargs"]
    assert parameters["kwargs"].kind is inspect.Parameter.VAR_KEYWORD
