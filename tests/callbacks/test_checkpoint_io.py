"""``CrashSafeCheckpointIO``: deferred checkpoints stay in memory until flushed, writes never leave half a file."""

import errno
from collections.abc import Callable

import pytest
import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from tlbench.callbacks.checkpoint_io import CrashSafeCheckpointIO


def checkpoint(value: float) -> dict:
    return {"state_dict": {"backbone.w": torch.zeros(2), "head.w": torch.full((2,), value)}, "epoch": int(value)}


def test_deferred_checkpoints_are_snapshots_written_on_flush_and_dropped_when_replaced(tmp_path):
    io = CrashSafeCheckpointIO(TorchCheckpointIO())
    io.deferring = True
    first, second = checkpoint(1.0), checkpoint(2.0)
    io.save_checkpoint(first, tmp_path / "a.ckpt")
    first["state_dict"]["head.w"].add_(100)  # training goes on: the deferred copy must not change
    io.save_checkpoint(second, tmp_path / "b.ckpt")
    io.remove_checkpoint(tmp_path / "a.ckpt")  # ModelCheckpoint replacing its best
    assert not list(tmp_path.iterdir())
    io.flush()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.ckpt"]
    assert torch.equal(io.load_checkpoint(tmp_path / "b.ckpt")["state_dict"]["head.w"], torch.full((2,), 2.0))
    io.deferring = False
    io.save_checkpoint(first, tmp_path / "a.ckpt")
    assert torch.equal(io.load_checkpoint(tmp_path / "a.ckpt")["state_dict"]["head.w"], torch.full((2,), 101.0))
    io.remove_checkpoint(tmp_path / "a.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.ckpt"]


class FullDisk(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with open(path, "wb") as stream:
            stream.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_keeps_the_old_file_and_names_the_checkpoint(tmp_path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"previous")
    with pytest.raises(OSError) as raised:
        CrashSafeCheckpointIO(FullDisk()).save_checkpoint(checkpoint(1.0), target)
    assert raised.value.filename == str(target) and raised.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


class ThenAnotherWriter(TorchCheckpointIO):
    """Writes its file, then lets ``other`` write before returning: a second run's writer of the same path
    finishing while this one's temporary file waits to be renamed."""

    def __init__(self, other: Callable[[], None]) -> None:
        self.other = other

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        super().save_checkpoint(checkpoint, path, storage_options)
        self.other()


def test_two_writers_of_one_path_never_share_a_temporary_file(tmp_path):
    target = tmp_path / "finetune-best-epoch00.ckpt"
    second = CrashSafeCheckpointIO(TorchCheckpointIO())
    first = CrashSafeCheckpointIO(ThenAnotherWriter(lambda: second.save_checkpoint(checkpoint(2.0), target)))
    first.save_checkpoint(checkpoint(1.0), target)  # renamed last, so its weights are the ones kept
    assert torch.equal(first.load_checkpoint(target)["state_dict"]["head.w"], torch.full((2,), 1.0))
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
