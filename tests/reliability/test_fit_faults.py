"""fit on bad data and under faults: stop before training with the fix, or keep every finished result."""

import hashlib
import json

import pandas as pd
import torch

from tests.conftest import TINY_FIT_ARGS, make_image, run_cli, run_tlbench

RUN = ("lightning_logs", "tiny_cnn1", "version_0")


def fit(data, cwd, *extra, run=run_cli):
    """A tiny fit, in this process unless ``run`` is ``run_tlbench`` (a fit that gets killed)."""
    cwd.mkdir(parents=True, exist_ok=True)
    return run("fit", "--data.root", str(data), *TINY_FIT_ARGS, *extra, cwd=cwd)


def last_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return result.stderr.strip().splitlines()[-1]


def test_bad_files_stop_fit_or_are_skipped_and_listed(tiny_dataset, tmp_path):
    (tiny_dataset / "class_0" / "zero.jpg").write_bytes(b"")
    (tiny_dataset / "class_1" / "notes.png").write_text("not an image")
    refused = fit(tiny_dataset, tmp_path)
    assert refused.returncode == 2
    line = last_line(refused)
    assert "2 unusable image file(s)" in line and "--data.skip_bad_images true" in line
    bad_files = pd.read_csv(tmp_path.joinpath(*RUN, "bad_files.csv"))
    assert set(bad_files.path) == {"class_0/zero.jpg", "class_1/notes.png"}

    skipped = fit(tiny_dataset, tmp_path / "skip", "--data.skip_bad_images", "true")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    metrics = json.loads((tmp_path / "skip").joinpath(*RUN, "metrics.json").read_text())
    assert {entry["path"] for entry in metrics["skipped"]} == {"class_0/zero.jpg", "class_1/notes.png"}
    assert sum(metrics["split_sizes"].values()) == 30
    split = pd.read_csv((tmp_path / "skip").joinpath(*RUN, "split.csv"))
    assert "class_0/zero.jpg" not in set(split.path) and split.sha256.str.len().eq(64).all()


def test_duplicates_across_splits_refused_unless_dedupe(tiny_dataset, tmp_path):
    for i in range(10):
        source = tiny_dataset / "class_0" / f"img_{i:03d}.png"
        (tiny_dataset / "class_0" / f"copy_{i:03d}.png").write_bytes(source.read_bytes())
    refused = fit(tiny_dataset, tmp_path)
    assert (
        refused.returncode == 2
        and "span train/val/test" in last_line(refused)
        and "--data.dedupe true" in last_line(refused)
    )
    deduped = fit(tiny_dataset, tmp_path / "dedupe", "--data.dedupe", "true")
    assert deduped.returncode == 0, deduped.stderr[-2000:]
    metrics = json.loads((tmp_path / "dedupe").joinpath(*RUN, "metrics.json").read_text())
    assert metrics["skipped"] and all("duplicate of" in entry["reason"] for entry in metrics["skipped"])
    split = pd.read_csv((tmp_path / "dedupe").joinpath(*RUN, "split.csv"))
    assert split.groupby("sha256").split.nunique().max() == 1


def test_resume_on_changed_data_refuses_unless_forced(tiny_dataset, tmp_path):
    args = ["--model.head_epochs", "2", "--model.finetune_epochs", "1"]
    kill = ["--trainer.callbacks+=tests.helpers.KillAtEpochStart", "--trainer.callbacks.epoch=2"]
    assert fit(tiny_dataset, tmp_path, *args, *kill, run=run_tlbench).returncode == -9
    run = tmp_path.joinpath(*RUN)
    last = tmp_path.joinpath("checkpoints", *RUN[1:], "last.ckpt")
    checkpoint_before = last.read_bytes()

    make_image(tiny_dataset / "class_2" / "new.png", (1, 2, 3), 99)
    refused = fit(tiny_dataset, tmp_path, *args, "--ckpt_path", "last")
    assert refused.returncode == 2 and "changed since the checkpoint (1 added, 0 removed" in last_line(refused)
    make_image(tiny_dataset / "class_2" / "new.png", (1, 2, 3), 99).unlink()
    # Same name, same size, new pixels: only the content digest can tell.
    make_image(tiny_dataset / "class_0" / "img_000.png", (9, 9, 9), 7)
    refused = fit(tiny_dataset, tmp_path, *args, "--ckpt_path", "last")
    assert refused.returncode == 2 and "(0 added, 0 removed, 1 changed" in last_line(refused)
    assert last.read_bytes() == checkpoint_before and not (run / "metrics.json").exists()

    forced = fit(tiny_dataset, tmp_path, *args, "--ckpt_path", "last", "--force", "true")
    assert forced.returncode == 0, forced.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["phases"]["head"]["epochs"] == 2 and metrics["phases"]["finetune"]["epochs"] == 1
    # The resumed run records the data it finished on, not the data it started with.
    split = pd.read_csv(run / "split.csv")
    current = split.set_index("path").sha256["class_0/img_000.png"]
    assert current == hashlib.sha256((tiny_dataset / "class_0" / "img_000.png").read_bytes()).hexdigest()


def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_good_checkpoint(tiny_dataset, tmp_path):
    result = fit(
        tiny_dataset, tmp_path, "--trainer.callbacks+=tests.helpers.PoisonHeadAtEpoch", "--trainer.callbacks.epoch=1"
    )
    assert result.returncode == 2
    line = last_line(result)
    assert "training diverged: train loss is nan at epoch 1, step 3" in line
    last = torch.load(tmp_path.joinpath("checkpoints", *RUN[1:], "last.ckpt"), map_location="cpu", weights_only=True)
    assert last["epoch"] == 0 and all(
        torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point()
    )


def test_disk_full_gives_clear_error_and_keeps_earlier_checkpoint(tiny_dataset, tmp_path):
    result = fit(
        tiny_dataset, tmp_path, "--trainer.callbacks+=tests.helpers.DiskFullAtEpoch", "--trainer.callbacks.epoch=1"
    )
    assert result.returncode == 2
    assert "No space left on device" in last_line(result) and "could not write checkpoint" in last_line(result)
    checkpoints = tmp_path.joinpath("checkpoints", *RUN[1:])
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 0
    assert not list(checkpoints.glob("*.partial"))


def test_ctrl_c_while_the_run_is_set_up_says_interrupted_without_a_traceback(tiny_dataset, tmp_path):
    result = fit(tiny_dataset, tmp_path, "--trainer.callbacks+=tests.helpers.InterruptAtSetup")
    assert result.returncode == 130 and last_line(result) == "interrupted", result.stderr[-2000:]
    assert not tmp_path.joinpath("checkpoints", *RUN[1:], "last.ckpt").exists()
