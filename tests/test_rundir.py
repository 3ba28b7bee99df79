"""The run directory contract: versions, finished runs, checkpoints to runs, and the one metrics.json writer."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_FIT_ARGS, tlbench_env
from tlbench.errors import TLBenchError
from tlbench.io import write_json
from tlbench.rundir import (
    finished_metrics,
    install_run_logger,
    latest_checkpoint,
    merge,
    read_metrics,
    run_dir_of_checkpoint,
    update_metrics,
)


def test_merge_is_deep_and_leaves_its_inputs_alone():
    base = {"phases": {"head": {"val_acc": 0.5, "epochs": 3}}, "dataset": "a"}
    merged = merge(base, {"phases": {"head": {"test_acc": 0.7}, "finetune": {"test_acc": 0.8}}, "dataset": "b"})
    assert merged == {
        "phases": {"head": {"val_acc": 0.5, "epochs": 3, "test_acc": 0.7}, "finetune": {"test_acc": 0.8}},
        "dataset": "b",
    }
    assert base == {"phases": {"head": {"val_acc": 0.5, "epochs": 3}}, "dataset": "a"}


def test_update_metrics_creates_then_merges(tmp_path):
    update_metrics(tmp_path, {"phases": {"head": {"epochs": 1}}})
    assert update_metrics(tmp_path, {"phases": {"head": {"test_acc": 1.0}}}) == {
        "phases": {"head": {"epochs": 1, "test_acc": 1.0}}
    }
    assert read_metrics(tmp_path) == {"phases": {"head": {"epochs": 1, "test_acc": 1.0}}}


@pytest.mark.parametrize(
    "content, problem", [(None, "no metrics.json"), ("{trunc", "is damaged"), ("[1, 2]", "not a JSON object")]
)
def test_missing_or_damaged_metrics_is_one_line(tmp_path, content, problem):
    if content is not None:
        (tmp_path / "metrics.json").write_text(content)
    with pytest.raises(TLBenchError, match=problem):
        read_metrics(tmp_path)


def test_latest_versions_and_finished_runs(tmp_path):
    for version in (0, 2, 10):
        (tmp_path / "checkpoints" / "e" / f"version_{version}").mkdir(parents=True)
        (tmp_path / "checkpoints" / "e" / f"version_{version}" / "last.ckpt").write_bytes(b"")
    assert latest_checkpoint(tmp_path, "e")[0] == 10  # numeric, not lexical, order
    with pytest.raises(TLBenchError, match="no checkpoints/other"):
        latest_checkpoint(tmp_path, "other")
    logs = tmp_path / "lightning_logs" / "e"
    write_json(logs / "version_1" / "metrics.json", {"dataset": "d", "phases": {"head": {"test_acc": 1.0}}})
    write_json(logs / "version_2" / "metrics.json", {"dataset": "d", "phases": {"head": {"val_acc": 1.0}}})
    # a `test` of version_1's checkpoint: tested phases, but a re-evaluation, not a finished fit
    write_json(logs / "version_3" / "metrics.json", {"phases": {"head": {"test_acc": 0.5}}})
    assert finished_metrics(tmp_path, "e") == tmp_path / "lightning_logs" / "e" / "version_1" / "metrics.json"
    assert (
        run_dir_of_checkpoint(tmp_path / "checkpoints" / "e" / "version_2" / "last.ckpt")
        == (tmp_path / "lightning_logs" / "e" / "version_2").resolve()
    )
    assert run_dir_of_checkpoint(tmp_path / "checkpoints" / "e" / "version_0" / "last.ckpt") is None  # no run folder


def trainer(root: Path):
    import pytorch_lightning as pl

    return pl.Trainer(default_root_dir=str(root), accelerator="cpu", enable_progress_bar=False)


def test_a_new_run_claims_its_folder_before_writing_and_a_resumed_one_keeps_its_own(tmp_path):
    (tmp_path / "lightning_logs" / "e" / "version_0").mkdir(parents=True)
    assert install_run_logger(trainer(tmp_path), "e").version == 1
    assert (tmp_path / "lightning_logs" / "e" / "version_1").is_dir(), "claimed before anything is written there"
    assert install_run_logger(trainer(tmp_path), "e", version=0).version == 0
    assert install_run_logger(trainer(tmp_path), "e").version == 2


def test_racing_claims_get_distinct_folders(tmp_path):
    trainers = [trainer(tmp_path) for _ in range(8)]
    start = threading.Barrier(len(trainers))
    versions = []

    def claim(each) -> None:
        start.wait()
        versions.append(install_run_logger(each, "e").version)

    threads = [threading.Thread(target=claim, args=(each,)) for each in trainers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(versions) == list(range(8))
    assert sorted(p.name for p in (tmp_path / "lightning_logs" / "e").iterdir()) == sorted(
        f"version_{n}" for n in range(8)
    )


def test_fits_started_at_once_in_one_folder_get_a_run_folder_each(tiny_dataset, tmp_path):
    """Three ``fit`` processes, held together past the point where each one's run folder is chosen: three complete
    runs, each with its own seed, checkpoints and TensorBoard events."""
    seeds = [11, 22, 33]
    fits = [
        subprocess.Popen(
            [sys.executable, "-m", "tlbench", "fit", "--data.root", str(tiny_dataset), *TINY_FIT_ARGS]
            + ["--seed_everything", str(seed)]
            + ["--trainer.callbacks+=tests.helpers.StartTogether", f"--trainer.callbacks.folder={tmp_path / 'started'}"]
            + [f"--trainer.callbacks.count={len(seeds)}"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=tlbench_env({"OMP_NUM_THREADS": "1"}),
        )
        for seed in seeds
    ]
    for process in fits:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    runs = sorted((tmp_path / "lightning_logs" / "tiny_cnn1").iterdir())
    assert [run.name for run in runs] == ["version_0", "version_1", "version_2"]
    seen = []
    for run in runs:
        seen.append(yaml.safe_load((run / "config.yaml").read_text())["seed_everything"])
        metrics = json.loads((run / "metrics.json").read_text())
        checkpoints = (tmp_path / "checkpoints" / "tiny_cnn1" / run.name).resolve()
        assert metrics["run_dir"] == str(run.resolve()) and metrics["checkpoint_dir"] == str(checkpoints)
        best = {Path(phase["best_ckpt"]) for phase in metrics["phases"].values()}
        assert {path.parent for path in best} == {checkpoints}
        assert {p.name for p in checkpoints.iterdir()} == {"last.ckpt", *(path.name for path in best)}
        events = list(run.glob("events.out.tfevents.*"))
        assert events and len({event.name.split(".")[-2] for event in events}) == 1, "one process's events"
    assert sorted(seen) == seeds
