"""Scale-out through Lightning's DDP: 2 CPU processes (gloo) on the study's leaves photos."""

import json

import pytest
import torch

from tests.conftest import run_cli, run_tlbench
from tlbench.cache import Cache
from tlbench.models.feature_cache import FeatureSet

ARGS = [
    "--config",
    "leaves_efficientnet_lite0.yaml",
    "--model.head_epochs",
    "2",
    "--model.finetune_epochs",
    "1",
    "--data.num_workers",
    "0",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.accelerator",
    "cpu",
    # DDP runs torch (engine auto); the single process must too for its feature cache to be comparable.
    "--model.engine",
    "torch",
]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(shared_data, tmp_path, monkeypatch):
    data = ["--data.root", str(shared_data / "leaves3")]
    (tmp_path / "ddp").mkdir()
    ddp = run_tlbench(
        "fit",
        *ARGS,
        *data,
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.callbacks+=tests.helpers.AssertRanksInSync",
        cwd=tmp_path / "ddp",
        env={"TLBENCH_CACHE_DIR": str(tmp_path / "cache_ddp"), "OMP_NUM_THREADS": "1"},
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    (tmp_path / "single").mkdir()
    single = run_cli(  # the reference needs no process of its own
        "fit",
        *ARGS,
        *data,
        "--trainer.devices",
        "1",
        cwd=tmp_path / "single",
        env={"TLBENCH_CACHE_DIR": str(tmp_path / "cache_single")},
    )
    assert single.returncode == 0, single.stderr[-3000:]

    run = ("lightning_logs", "leaves3_efficientnet_lite0", "version_0")
    metrics = {
        name: json.loads((tmp_path / name).joinpath(*run, "metrics.json").read_text()) for name in ("ddp", "single")
    }
    for phase in ("head", "finetune"):
        assert metrics["ddp"]["phases"][phase]["test_n"] == metrics["single"]["phases"][phase]["test_n"] == 6
        assert (
            metrics["ddp"]["phases"][phase]["test_acc"] >= 0.8 and metrics["single"]["phases"][phase]["test_acc"] >= 0.8
        )
    assert not (tmp_path / "ddp").joinpath(*run[:-1], "version_1").exists(), "only rank zero writes the run directory"

    # Each process encoded half of the images; the gathered cache equals the single-process one.
    caches = {}
    for name in ("cache_ddp", "cache_single"):
        monkeypatch.setenv("TLBENCH_CACHE_DIR", str(tmp_path / name))
        cache = Cache("features")
        caches[name] = {path.stem: cache.get(path.stem, FeatureSet.from_bytes) for path in cache.folder.glob("*.entry")}
    assert caches["cache_ddp"].keys() == caches["cache_single"].keys() and len(caches["cache_ddp"]) == 2
    for key, left in caches["cache_ddp"].items():
        right = caches["cache_single"][key]
        assert torch.equal(left.rows, right.rows) and torch.equal(left.targets, right.targets)
        assert torch.allclose(left.features, right.features, atol=1e-4)
