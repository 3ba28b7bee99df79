"""One output root: every command run with its defaults writes under ./lightning_logs/ and nowhere else."""

from __future__ import annotations

from pathlib import Path

from tests.commands.conftest import CELL_OVERRIDES
from tests.conftest import make_dataset, run_cli
from tlbench.models.backbones import DEFAULT_BACKBONE


def written(cwd: Path) -> set[str]:
    return {path.relative_to(cwd).as_posix() for path in cwd.rglob("*") if path.is_file()}


def test_commands_with_defaults_write_only_under_lightning_logs(tiny_run, tmp_path):
    data = make_dataset(tmp_path / "tiny")
    cwd = tmp_path / "work"
    cwd.mkdir()
    env = {"TLBENCH_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    commands = [
        ("data", "audit", str(data)),
        ("data", "split", str(data)),
        ("data", "info", str(data)),
        ("check", "--data.root", str(data), "--per_class", "1"),
        ("classify", str(tiny_run), str(data / "class_0")),
    ]
    for command in commands:
        result = run_cli(*command, cwd=cwd, env=env)
        assert result.returncode == 0, (command, result.stderr[-2000:])
    assert written(cwd) == {
        "lightning_logs/audit/tiny/bad_files.csv",
        "lightning_logs/audit/tiny/duplicates.csv",
        "lightning_logs/splits/tiny_seed0.csv",
        f"lightning_logs/check/tiny_{DEFAULT_BACKBONE}/check.csv",
        f"lightning_logs/check/tiny_{DEFAULT_BACKBONE}/contact_sheet.png",
    }

    # A grid's runs sit beside hand-typed ones, its status in grids/<name>/; report and export read and write there.
    grid = run_cli("grid", "--datasets", str(data), "--backbones", "cnn1", "--", *CELL_OVERRIDES, cwd=cwd, env=env)
    assert grid.returncode == 0, grid.stdout[-2000:] + grid.stderr[-2000:]
    for command in (("report",), ("export", "lightning_logs/tiny_cnn1_seed0/version_0")):
        result = run_cli(*command, cwd=cwd, env=env)
        assert result.returncode == 0, (command, result.stderr[-2000:])
    files = written(cwd)
    outside = {path for path in files if not path.startswith("lightning_logs/")}
    assert outside and all(path.startswith("checkpoints/tiny_cnn1_seed0/") for path in outside)  # fit's own layout
    expected = [
        "grids/tiny_cnn1_seed0/grid_status.csv",
        "grids/tiny_cnn1_seed0/logs/tiny_cnn1_seed0.log",
        "tiny_cnn1_seed0/version_0/metrics.json",
        "reports/all/report.md",
        "tiny_cnn1_seed0/version_0/export_finetune/model.json",
    ]
    assert {f"lightning_logs/{path}" for path in expected} <= files
