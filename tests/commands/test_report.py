"""``tlbench report`` on the shared tiny grid: its numbers are recomputed here from the metrics files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from tests.commands.conftest import BACKBONES, DATASETS, SEEDS, cell_metrics
from tests.conftest import run_cli
from tlbench.evaluation.final import final_phase
from tlbench.evaluation.stats import t_quantile
from tlbench.report import accuracy_interval, write_report

T_975 = {1: 12.7062, 2: 4.3027, 4: 2.7764, 9: 2.2622, 30: 2.0423}  # published two-sided 95% t table


@pytest.fixture(scope="module")
def report_dir(grid_study) -> Path:
    result = run_cli("report", "runs", "--output", "report", cwd=grid_study.root)
    assert result.returncode == 0, result.stderr[-2000:]
    return grid_study.root / "report"


def test_report_numbers_equal_the_metrics_files(grid_study, report_dir):
    runs = [json.loads(Path(path).read_text()) for path in cell_metrics(grid_study)]
    summary = pd.read_csv(report_dir / "report.csv")
    assert len(summary) == len(DATASETS) * 2 * 2  # datasets x backbones x phases
    for row in summary.itertuples():
        cell = [run for run in runs if (run["dataset"], run["backbone"]) == (row.dataset, row.backbone)]
        accs = [run["phases"][row.phase]["test_acc"] for run in cell]
        mean, sd = sum(accs) / len(accs), pd.Series(accs).std()
        half = T_975[len(SEEDS) - 1] * sd / math.sqrt(len(SEEDS))
        assert row.n_seeds == len(SEEDS) and row.ci_method == f"t over {len(SEEDS)} seeds"
        assert row.acc_mean == pytest.approx(mean)
        assert (row.acc_ci_lo, row.acc_ci_hi) == pytest.approx((max(0, mean - half), min(1, mean + half)), abs=1e-4)
        seconds = [run["phases"][row.phase]["train_seconds"] for run in cell]
        assert row.train_seconds_mean == pytest.approx(sum(seconds) / len(seconds))
        if row.phase == "finetune":
            discordant = []
            for run in cell:
                head, tuned = (
                    pd.read_csv(Path(run["run_dir"]) / f"predictions_{p}.csv").set_index("path").correct
                    for p in ("head", "finetune")
                )
                tuned = tuned.reindex(head.index)
                discordant.append((int((head & ~tuned.astype(bool)).sum()), int((~head.astype(bool) & tuned).sum())))
            assert (row.finetune_pooled_b, row.finetune_pooled_c) == tuple(map(sum, zip(*discordant)))


def test_report_writes_tables_with_the_best_in_bold_and_figures(grid_study, report_dir):
    markdown = (report_dir / "report.md").read_text()
    summary = pd.read_csv(report_dir / "report.csv")
    for phase in ("head", "finetune"):
        for dataset in DATASETS:
            best = summary[(summary.phase == phase) & (summary.dataset == dataset)].acc_mean.max()
            assert f"**{100 * best:.1f} [" in markdown
    assert (
        "Did fine-tuning help?" in markdown
        and "Training time" in markdown
        and "| alpha | 3 | 21 | 6 | 3 | test |" in markdown
    )
    assert "2017" not in markdown.split("## Figures")[0].split("## Datasets")[1], "no 2017 figures for unknown datasets"
    for figure in ("accuracy.png", "time_vs_accuracy.png"):
        assert (report_dir / figure).read_bytes().startswith(b"\x89PNG")


def test_t_quantile_matches_the_t_table():
    for df, expected in T_975.items():
        assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)


def test_a_single_seed_uses_the_runs_own_wilson_interval():
    one = pd.DataFrame({"test_acc": [0.8], "test_acc_ci_lo": [0.5], "test_acc_ci_hi": [0.95]})
    assert accuracy_interval(one) == (0.5, 0.95, "wilson (1 run)")


def test_report_final_model_table_equals_the_runs_final_phases(grid_study, report_dir):
    runs = [json.loads(Path(path).read_text()) for path in cell_metrics(grid_study)]
    final = pd.read_csv(report_dir / "final.csv")
    assert len(final) == len(DATASETS) * 2  # datasets x backbones
    markdown = (report_dir / "report.md").read_text()
    assert "## Final model" in markdown and "## Is the final model worse than its head phase?" in markdown
    for row in final.itertuples():
        cell = [run for run in runs if (run["dataset"], run["backbone"]) == (row.dataset, row.backbone)]
        chosen = [final_phase(run) for run in cell]  # recorded, or computed for a cell killed before finish_run
        accs = [run["phases"][phase]["test_acc"] for run, phase in zip(cell, chosen)]
        assert row.phase == "final" and row.n_seeds == len(SEEDS) and row.acc_mean == pytest.approx(sum(accs) / 2)
        assert sorted(row.chosen.split(";")) == sorted(f"{p}x{chosen.count(p)}" for p in set(chosen))
        discordant = []
        for run, phase in zip(cell, chosen):
            head, last = (
                pd.read_csv(Path(run["run_dir"]) / f"predictions_{p}.csv").set_index("path").correct.astype(bool)
                for p in ("head", phase)
            )
            last = last.reindex(head.index)
            discordant.append((int((head & ~last).sum()), int((~head & last).sum())))
        assert (row.final_vs_head_pooled_b, row.final_vs_head_pooled_c) == tuple(map(sum, zip(*discordant)))
        assert f"{_percent(row.acc_mean)} [" in markdown.split("## Final model")[1].split("##")[0]


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def _final_correct(run: dict) -> pd.Series:
    path = Path(run["run_dir"]) / f"predictions_{final_phase(run)}.csv"
    return pd.read_csv(path).set_index("path").correct.astype(bool)


def _discordant(runs: list[dict], reference: str, model: str, datasets) -> tuple[int, int]:
    """Images only the reference's final model got right, and only the model's, summed over datasets and seeds."""
    b = c = 0
    for dataset in datasets:
        for seed in SEEDS:
            base, other = (
                _final_correct(next(r for r in runs if (r["dataset"], r["backbone"], r["split_seed"]) == key))
                for key in ((dataset, reference, seed), (dataset, model, seed))
            )
            other = other.reindex(base.index)
            b, c = b + int((base & ~other).sum()), c + int((~base & other).sum())
    return b, c


def test_report_compares_candidates_with_the_best_by_pooled_mcnemar(grid_study, report_dir):
    runs = [json.loads(Path(path).read_text()) for path in cell_metrics(grid_study)]
    final = pd.read_csv(report_dir / "final.csv")
    candidates = pd.read_csv(report_dir / "candidates.csv")
    assert list(candidates.dataset) == [d for d in (*DATASETS, "all datasets") for _ in BACKBONES]
    for dataset, rows in candidates.groupby("dataset"):
        scope = DATASETS if dataset == "all datasets" else (dataset,)
        means = final[final.dataset.isin(scope)].groupby("backbone").acc_mean.mean()
        assert rows.set_index("backbone").acc_mean.to_dict() == pytest.approx(means.to_dict())
        best = means.idxmax()
        assert set(rows.reference) == {best}
        other = rows[rows.backbone != best].iloc[0]
        assert (other.vs_reference_pooled_b, other.vs_reference_pooled_c) == _discordant(
            runs, best, other.backbone, scope
        )
        assert math.isnan(rows[rows.backbone == best].vs_reference_pooled_p.iloc[0])
    section = (report_dir / "report.md").read_text().split("## Candidates compared")[1].split("\n## ")[0]
    assert ": reference" in section and "p=" in section


def test_report_reference_is_chosen_by_name_and_an_unknown_name_is_one_line(grid_study, tmp_path):
    write_report(grid_study.root / "runs", tmp_path / "ref", reference="cnn1")
    candidates = pd.read_csv(tmp_path / "ref" / "candidates.csv")
    assert set(candidates.reference) == {"cnn1"}
    assert candidates[candidates.backbone == "cnn6"].vs_reference_pooled_p.notna().all()
    result = run_cli("report", "runs", "--output", str(tmp_path / "bad"), "--reference", "vit", cwd=grid_study.root)
    assert result.returncode == 2 and "--reference vit: no finished run of that model" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "bad" / "report.md").exists()


def test_a_test_run_beside_the_fits_is_left_out_not_a_crash(grid_study, report_dir, tmp_path):
    """``test --config <run>/config.yaml`` writes a metrics.json with test results but no dataset of its own."""
    import shutil

    runs = shutil.copytree(grid_study.root / "runs", tmp_path / "runs")
    retest = runs / "lightning_logs" / "alpha_cnn1_seed0" / "version_9" / "metrics.json"
    retest.parent.mkdir(parents=True)
    retest.write_text(json.dumps({"phases": {"finetune": {"test_acc": 0.5, "test_n": 4}}}))
    write_report(runs, tmp_path / "report")
    assert pd.read_csv(tmp_path / "report" / "report.csv").equals(pd.read_csv(report_dir / "report.csv"))
