"""Writes survive a power cut and are readable by the group: fsync order, folder syncs, modes, unwritable targets.

A power cut cannot be simulated in a test, so the order of the system calls is checked instead: a file must be
fsynced before it is renamed into place, and the folder holding the new name fsynced after, or the rename itself
can be lost. ``os.fsync`` is wrapped to record the path behind each descriptor (``/proc/self/fd``, Linux).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import torch
from pytorch_lightning.plugins import TorchCheckpointIO
from safetensors.torch import save_file

from tests.conftest import run_cli
from tlbench.callbacks.checkpoint_io import CrashSafeCheckpointIO
from tlbench.errors import TLBenchError
from tlbench.export import export_bundle
from tlbench.io import atomic_write, write_json


@pytest.fixture
def disk_log(monkeypatch) -> list[tuple[str, ...]]:
    """Every ``fsync`` (the path synced) and rename (``os.replace``/``os.rename``: source, destination), in order."""
    events: list[tuple[str, ...]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(descriptor: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def renamer(real):
        def rename(source, destination, **options) -> None:
            real(source, destination, **options)
            events.append(("rename", str(source), str(destination)))

        return rename

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", renamer(real_replace))
    monkeypatch.setattr(os, "rename", renamer(real_rename))
    return events


@pytest.fixture
def umask_027():
    """A group-shared umask (group reads, others nothing): outputs must follow it, not mkstemp's owner-only 0600."""
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def rename_into(events: list[tuple[str, ...]], destination: Path) -> int:
    [index] = [i for i, event in enumerate(events) if event[0] == "rename" and event[2] == str(destination)]
    return index


def assert_durable_rename(events: list[tuple[str, ...]], destination: Path) -> None:
    """The renamed file was synced before the rename, and the destination's folder after it."""
    index = rename_into(events, destination)
    assert ("fsync", events[index][1]) in events[:index], events
    assert ("fsync", str(destination.parent)) in events[index + 1 :], events


def test_atomic_write_syncs_the_folder_after_the_rename(tmp_path, disk_log):
    write_json(tmp_path / "metrics.json", {"test_acc": 1.0})
    assert_durable_rename(disk_log, tmp_path / "metrics.json")


def test_checkpoint_writer_syncs_the_folder_after_the_rename(tmp_path, disk_log):
    CrashSafeCheckpointIO(TorchCheckpointIO()).save_checkpoint({"state_dict": {}}, tmp_path / "best.ckpt")
    assert_durable_rename(disk_log, tmp_path / "best.ckpt")


def test_bundle_files_are_synced_before_the_folder_rename(tiny_run, tmp_path, disk_log):
    bundle, _ = export_bundle(tiny_run, formats="onnx,torchscript", output=tmp_path / "bundle")
    index = rename_into(disk_log, bundle)
    staging = Path(disk_log[index][1])
    before, after = disk_log[:index], disk_log[index + 1 :]
    for file in sorted(bundle.iterdir()):
        assert ("fsync", str(staging / file.name)) in before, (file.name, disk_log)
    assert ("fsync", str(staging)) in before
    assert ("fsync", str(tmp_path)) in after


def test_bundle_modes_follow_the_umask(tiny_run, tmp_path, umask_027):
    """safetensors wrote weights.safetensors 0600 and the folder was fixed at 0755, whatever the umask."""
    bundle, _ = export_bundle(tiny_run, formats="onnx,torchscript", output=tmp_path / "bundle")
    modes = {file.name: stat.S_IMODE(file.stat().st_mode) for file in bundle.iterdir()}
    assert modes == dict.fromkeys(["weights.safetensors", "model.json", "model.onnx", "model.torchscript.pt"], 0o640)
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o750


def test_atomic_write_mode_follows_the_umask_even_when_the_writer_replaces_the_file(tmp_path, umask_027):
    """safetensors writes its own owner-only temporary file and renames it over the path it is given."""
    atomic_write(tmp_path / "w.safetensors", lambda temporary: save_file({"w": torch.zeros(2)}, temporary))
    write_json(tmp_path / "m.json", {})
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o640


def test_cli_export_under_a_file_is_one_line_and_writes_nothing(tiny_run, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should be")
    result = run_cli("export", str(tiny_run), "--output", str(blocker / "bundle"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert f"{blocker} is not a writable folder" in line and "choose another --output" in line
    assert sorted(tmp_path.iterdir()) == [blocker]


def test_export_to_a_read_only_place_leaves_no_partial_bundle(tiny_run, tmp_path, monkeypatch):
    """The rename into a read-only mount fails last, after every file was written: the staging folder goes too."""
    destination = tmp_path / "bundle"
    real_rename = os.rename

    def read_only(source, target) -> None:
        if Path(target) == destination:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(target))
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", read_only)
    with pytest.raises(TLBenchError, match=f"could not write the bundle {destination}: Read-only file system"):
        export_bundle(tiny_run, output=destination)
    assert list(tmp_path.iterdir()) == []
