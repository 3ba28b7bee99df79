"""``tlbench grid`` end to end through the real CLI: layout, shared splits, resume after SIGKILL, failures.

The killed-and-resumed grid is the session fixture ``grid_study`` (tests/commands/conftest.py).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd

from tests.commands.conftest import (
    CELL_OVERRIDES,
    DATASETS,
    EXPERIMENTS,
    GRID_STATUS,
    SEEDS,
    cell_metrics,
    finished_cells,
)
from tests.conftest import make_dataset, make_image, run_cli
from tlbench.__main__ import main
from tlbench.configs import CONFIGS, load_grid_file, recipe_args
from tlbench.grid import build_spec, run_cell
from tlbench.rundir import is_finished


def test_grid_runs_every_cell_into_its_own_run_directory(grid_study):
    assert grid_study.rerun.returncode == 0, grid_study.rerun.stdout[-3000:] + grid_study.rerun.stderr[-3000:]
    status = pd.read_csv(grid_study.runs / GRID_STATUS)
    assert sorted(status.experiment) == sorted(EXPERIMENTS)
    assert set(status.status) == {"done"}
    for row in status.itertuples():
        metrics = pd.read_json(row.metrics, typ="series")
        assert Path(row.metrics).parents[1] == (grid_study.runs / "lightning_logs" / row.experiment).resolve()
        assert (metrics.backbone, metrics.split_seed, metrics.dataset) == (row.backbone, row.seed, row.dataset)
        assert (Path(metrics.checkpoint_dir) / "last.ckpt").is_file()
    assert re.search(r"^\[7/7\] (alpha|beta) x cnn[16] x seed [01]: done in .* left ~", grid_study.rerun.stdout, re.M)


def test_every_backbone_sees_the_same_split_per_dataset_and_seed(grid_study):
    metrics = cell_metrics(grid_study)

    def split(dataset: str, backbone: str, seed: int) -> pd.DataFrame:
        return pd.read_csv(Path(metrics[f"{dataset}_{backbone}_seed{seed}"]).with_name("split.csv"))

    for dataset in DATASETS:
        for seed in SEEDS:
            pd.testing.assert_frame_equal(split(dataset, "cnn1", seed), split(dataset, "cnn6", seed))
        assert not split(dataset, "cnn1", 0).equals(split(dataset, "cnn1", 1)), "the seed must reach the split"


def test_rerun_after_kill_skips_finished_cells_and_completes_the_rest(grid_study):
    status = pd.read_csv(grid_study.runs / GRID_STATUS).set_index("experiment")
    assert f"{len(grid_study.killed_after)} already finished" in grid_study.rerun.stdout
    for experiment, mtime in grid_study.killed_after.items():
        assert status.loc[experiment, "status"] == "done"
        assert Path(status.loc[experiment, "metrics"]).stat().st_mtime_ns == mtime
    assert set(finished_cells(grid_study.runs)) == set(EXPERIMENTS)


def test_a_failing_cell_is_recorded_and_the_grid_goes_on(tmp_path):
    make_dataset(tmp_path / "single", classes=1)
    make_dataset(tmp_path / "alpha")
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(
        f"datasets: [{tmp_path / 'single'}, {tmp_path / 'alpha'}]\nbackbones: [cnn1]\nseeds: [3]\n"
        f"overrides: [{', '.join(repr(arg) for arg in CELL_OVERRIDES)}]\n"
    )
    result = run_cli("grid", "--grid", str(grid_file), "--output", "runs", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 1, result.stderr[-2000:]
    status_file = tmp_path / "runs" / "lightning_logs" / "grids" / "grid" / "grid_status.csv"  # named by grid.yaml
    status = pd.read_csv(status_file).set_index("experiment")
    assert status.loc["single_cnn1_seed3", "status"] == "failed"
    assert "at least 2 classes" in status.loc["single_cnn1_seed3", "error"]
    assert status.loc["alpha_cnn1_seed3", "status"] == "done"
    assert is_finished(Path(status.loc["alpha_cnn1_seed3", "metrics"]))
    assert "FAILED (exit 2)" in result.stdout and "1 failed" in result.stdout


def test_recipes_come_from_the_study_configs_then_the_model_configs():
    assert recipe_args("birds10", "efficientnet_lite0") == ["--config", str(CONFIGS / "birds_efficientnet_lite0.yaml")]
    assert recipe_args("alpha", "cnn6") == ["--model", str(CONFIGS / "models" / "cnn6.yaml")]
    assert recipe_args("alpha", "cnn1") == []


def test_shipped_grid_files_plan_the_study_and_the_quick_grid():
    study = build_spec(load_grid_file("configs/grids/study2017.yaml"), {})
    assert study.datasets == ["noodles", "leaves", "dogs", "birds", "butterflies"]
    assert study.backbones == ["vgg16", "vgg19", "inception_v3", "xception", "cnn6"]
    quick = build_spec(load_grid_file("quick"), {"seeds": "0"})
    assert (quick.datasets, quick.backbones, quick.seeds, quick.data_dir) == (
        ["birds10", "leaves3"],
        ["efficientnet_lite0", "cnn6"],
        [0],
        "../shared/data",
    )


def test_grid_rejects_overrides_it_sets_itself_and_stray_pass_through(tmp_path, capsys):
    assert main(["grid", "--datasets", "a", "--backbones", "cnn1", "--", "--experiment", "x"]) == 2
    assert "sets --experiment itself" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--", "--model.head_epochs", "1"]) == 2
    assert "no arguments after '--'" in capsys.readouterr().err


def test_a_running_cell_shows_its_newest_log_line_while_it_runs(tmp_path):
    script = (
        "import sys, time\n"
        "print('epoch 1', flush=True); time.sleep(1.5)\n"
        "sys.stdout.write('bar 10%\\rbar 90%'); sys.stdout.flush(); time.sleep(1.5)\n"
        "sys.exit(3)"
    )
    shown: list[str] = []
    returncode = run_cell([sys.executable, "-c", script], tmp_path / "cell.log", shown.append, every=0.2)
    assert returncode == 3
    assert shown == ["epoch 1", "bar 90%"]  # each line once; a progress bar by its newest state
    assert (tmp_path / "cell.log").read_bytes() == b"epoch 1\nbar 10%\rbar 90%"


def test_recipe_grid_plans_every_shared_dataset_and_candidate_and_names_cells_by_recipe(tmp_path):
    """configs/grids/recipe.yaml: each cell is ``fit --model configs/recipes/<name>.yaml`` with no backbone
    override (the recipe names its backbone), and the run is named after the recipe."""
    from tlbench.grid import cell_command, plan_cells

    for name in ("birds10", "leaves3", "butterflies10", "aerial7", "xray2", "plankton65"):
        make_image(tmp_path / name / "a" / "0.png", (0, 0, 0), seed=0)  # a grid refuses a dataset without images
    spec = build_spec({**load_grid_file("recipe"), "data_dir": str(tmp_path)}, {})
    cells = plan_cells(spec)
    assert len(cells) == 6 * 4 * 3 and spec.backbones == []
    cell = next(c for c in cells if c.backbone == "lite2" and c.dataset == "xray2" and c.seed == 1)
    command = cell_command(cell, spec, tmp_path)
    # the shipped file, whether found through the checkout's ./configs link or in the package
    assert Path(command[command.index("--model") + 1]).resolve() == (CONFIGS / "recipes" / "lite2.yaml").resolve()
    assert "--model.backbone" not in command and cell.experiment == "xray2_lite2_seed1"


def test_every_recipe_names_itself():
    for path in (CONFIGS / "recipes").glob("*.yaml"):
        assert f"recipe: {path.stem}\n" in path.read_text(), path
