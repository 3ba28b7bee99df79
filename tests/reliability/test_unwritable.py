"""A place a run cannot write (a read-only working or output folder, a file where a folder should be) stops
``fit`` in one line naming it, exit 2, before training, with no half-made version folder left behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.conftest import TINY_FIT_ARGS, make_dataset, run_cli
from tlbench.errors import TLBenchError
from tlbench.rundir import install_run_logger


def fit(data: Path, cwd: Path, *extra: str):
    cwd.mkdir(parents=True, exist_ok=True)
    return run_cli("fit", "--data.root", str(data), *TINY_FIT_ARGS, *extra, cwd=cwd)


def error_line(result) -> str:
    """The one error line of a refused fit: exit 2, no traceback."""
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: cannot create a run folder in "), line
    return line


def test_fit_where_lightning_logs_is_a_file_stops_in_one_line(tmp_path):
    data = make_dataset(tmp_path / "d", classes=2, per_class=4)
    work = tmp_path / "work"
    work.mkdir()
    (work / "lightning_logs").write_text("not a folder")
    line = error_line(fit(data, work))
    assert f"{work / 'lightning_logs'}" in line and "--trainer.default_root_dir DIR" in line
    assert sorted(path.name for path in work.iterdir()) == ["lightning_logs"]  # no checkpoints/ either


def test_fit_whose_checkpoint_folder_cannot_be_made_stops_before_training_and_leaves_no_version(tmp_path):
    data = make_dataset(tmp_path / "d", classes=2, per_class=4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoints").write_text("not a folder")
    line = error_line(fit(data, tmp_path / "work", "--trainer.default_root_dir", str(out)))
    assert f"{out / 'checkpoints' / 'd_cnn1'}" in line
    assert not list((out / "lightning_logs").glob("*/version_*")), "the claimed version folder is given back"


def trainer(root: Path):
    import pytorch_lightning as pl

    return pl.Trainer(default_root_dir=str(root), accelerator="cpu", enable_progress_bar=False, logger=False)


@pytest.mark.parametrize(
    "read_only, code", [("", errno.EROFS), ("", errno.EACCES), ("checkpoints", errno.EROFS)], ids=str
)
def test_a_read_only_output_folder_is_one_error_naming_it_and_nothing_is_left(tmp_path, monkeypatch, read_only, code):
    """Root ignores file modes, so a read-only file system (or a folder root may not write) is simulated where
    every folder is made: ``os.mkdir`` refusing below ``out/<read_only>``."""
    out = tmp_path / "out"
    out.mkdir()
    run = trainer(out)
    refused = out / read_only
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if Path(path).is_relative_to(refused):
            raise OSError(code, os.strerror(code), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(TLBenchError) as raised:
        install_run_logger(run, "e")
    message = str(raised.value)
    assert len(message.splitlines()) == 1 and os.strerror(code) in message and str(refused) in message
    assert "--trainer.default_root_dir DIR" in message
    assert not list(out.rglob("version_*"))
