"""The run directory contract: versions, finished runs, checkpoints to runs, and the one metrics.json writer."""

from __future__ import annotations

import pytest

from tlbench.errors import TLBenchError
from tlbench.io import write_json
from tlbench.rundir import (
    finished_metrics,
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
    write_json(
        tmp_path / "lightning_logs" / "e" / "version_1" / "metrics.json", {"phases": {"head": {"test_acc": 1.0}}}
    )
    write_json(tmp_path / "lightning_logs" / "e" / "version_2" / "metrics.json", {"phases": {"head": {"val_acc": 1.0}}})
    assert finished_metrics(tmp_path, "e") == tmp_path / "lightning_logs" / "e" / "version_1" / "metrics.json"
    assert (
        run_dir_of_checkpoint(tmp_path / "checkpoints" / "e" / "version_2" / "last.ckpt")
        == (tmp_path / "lightning_logs" / "e" / "version_2").resolve()
    )
    assert run_dir_of_checkpoint(tmp_path / "checkpoints" / "e" / "version_0" / "last.ckpt") is None  # no run folder
