"""A study report from run directories: accuracy tables with intervals over seeds, paired fine-tuning tests,
time and dataset-size tables, figures.

Only ``metrics.json`` files (found recursively) and the predictions CSVs they name are read, so a report can
be rebuilt anywhere the run directories were copied, without checkpoints or a GPU. A seed is the run's
``split_seed`` (``grid`` sets the training seed to the same value).

Statistics, chosen for a handful of seeds and test sets of tens to hundreds of images:

* Accuracy per dataset x backbone x phase is the mean over seeds with a 95% Student-t interval over seeds
  when there are at least two seeds: that spread covers the split and the training randomness together. With
  one seed there is no spread to measure, and the run's own Wilson interval (test-set sampling only) is shown.
* Whether fine-tuning helped is a paired question on the same images: per seed, McNemar's exact test on the
  head-phase and fine-tune-phase predictions of the same test images (``compare_phases``). Seeds are combined
  by pooling their discordant pairs into one exact McNemar test: under "fine-tuning changes nothing", each
  discordant image is a fair coin in every seed, so the pooled count is binomial too, and pooling gains power
  that three separate small tests lack. The number of seeds significant on their own is shown beside it.
* The final model of a run is the phase its validation loss chose (``evaluation/final.py``); its accuracy is
  summarised like a phase's, and the same pooled McNemar test compares it with the run's head phase: the
  default recipe should never end significantly worse than its own frozen-backbone head.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tlbench.configs import dataset_stem
from tlbench.errors import TLBenchError
from tlbench.evaluation import plots, stats
from tlbench.evaluation.artifacts import CONFIDENCE, SIGNIFICANCE, compare_phases
from tlbench.evaluation.final import final_phase
from tlbench.io import read_csv, read_json, write_csv, write_text
from tlbench.outputs import LOGS, default_output
from tlbench.rundir import is_finished

STUDY_2017 = Path(__file__).resolve().parent / "data" / "study2017.csv"
PHASES = ("head", "finetune")
PHASE_TITLES = {
    "head": "Head phase (frozen backbone)",
    "finetune": "Fine-tune phase (or from scratch for cnn baselines)",
}


def model_name(metrics: dict) -> str:
    """What a run is compared as: its named recipe (``configs/recipes/``; runs before recipes were recorded, and
    runs without one, record their backbone) — so a recipe grid's candidates on one backbone stay apart."""
    return metrics.get("recipe") or metrics["backbone"]


@dataclass
class Run:
    path: Path
    metrics: dict

    @property
    def key(self) -> tuple[str, str, int]:
        return self.metrics["dataset"], model_name(self.metrics), int(self.metrics["split_seed"])


def collect_runs(runs_dir: str | Path) -> tuple[list[Run], list[Path]]:
    """Finished runs under ``runs_dir``, one per dataset x backbone x seed, and the metrics files left out.

    A file is left out when its run did not finish (no test result for some phase), when it is not a training run
    (``test`` writes its results beside the fit's, in a version folder of its own), or when a newer run of the same
    dataset, backbone and seed exists (a rerun supersedes the earlier one).
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise TLBenchError(
            f"{runs_dir} is not a folder; pass the folder fit wrote its runs to (tlbench report RUNS_DIR)"
        )
    newest: dict[tuple, Run] = {}
    left_out = []
    for path in sorted(runs_dir.rglob("metrics.json")):
        if not is_finished(path):
            left_out.append(path)
            continue
        run = Run(path, read_json(path))
        previous = newest.get(run.key)
        if previous is not None and previous.path.stat().st_mtime > path.stat().st_mtime:
            left_out.append(path)
            continue
        if previous is not None:
            left_out.append(previous.path)
        newest[run.key] = run
    if not newest:
        raise TLBenchError(
            f"no finished run (metrics.json with test results) under {runs_dir}; pass the folder fit wrote its runs"
            " to, or let a fit finish its test"
        )
    return sorted(newest.values(), key=lambda run: run.key), left_out


def run_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run and phase: accuracy, its Wilson interval, epochs, time, throughput, split sizes and whether
    the phase is the run's final model."""
    rows = []
    for run in runs:
        metrics = run.metrics
        sizes = metrics["split_sizes"]
        final = final_phase(metrics)
        for phase, values in metrics["phases"].items():
            seconds = values["train_seconds"]
            rows.append(
                {
                    "dataset": metrics["dataset"],
                    "backbone": model_name(metrics),
                    "seed": int(metrics["split_seed"]),
                    "phase": phase,
                    "final": phase == final,
                    "test_acc": values["test_acc"],
                    "test_acc_ci_lo": values["test_acc_ci95"][0],
                    "test_acc_ci_hi": values["test_acc_ci95"][1],
                    "test_n": values["test_n"],
                    "test_on": metrics["test_on"],
                    "epochs": values["epochs"],
                    "train_seconds": seconds,
                    # Images the phase trained on per second of its training epochs (validation excluded).
                    "images_per_second": sizes["train"] * values["epochs"] / seconds if seconds > 0 else math.nan,
                    "classes": len(metrics["classes"]),
                    "train": sizes["train"],
                    "val": sizes["val"],
                    "test": sizes["test"],
                    "metrics": str(run.path),
                }
            )
    return pd.DataFrame(rows)


def accuracy_interval(group: pd.DataFrame) -> tuple[float, float, str]:
    """95% interval of the mean accuracy: t over seeds with two or more seeds, else the run's Wilson interval."""
    values = group.test_acc.to_numpy(dtype=float)
    if len(values) == 1:
        return float(group.test_acc_ci_lo.iloc[0]), float(group.test_acc_ci_hi.iloc[0]), "wilson (1 run)"
    lo, hi = stats.mean_t_interval(values, CONFIDENCE)
    return max(0.0, lo), min(1.0, hi), f"t over {len(values)} seeds"


def phase_predictions(run: Run, phase: str) -> pd.DataFrame:
    return read_csv(run.path.parent / run.metrics["phases"][phase]["predictions"])


def final_predictions(run: Run) -> pd.DataFrame:
    return phase_predictions(run, final_phase(run.metrics))


def pooled_mcnemar(pairs: list[tuple[pd.DataFrame, pd.DataFrame, str]], prefix: str) -> dict:
    """Paired comparisons ``(before, after, split)``, one per seed (or dataset x seed), pooled by their discordant
    pairs into one exact McNemar test (see module notes); keys start with ``prefix``."""
    tests = [compare_phases(before, after, split=split) for before, after, split in pairs]
    b = sum(test["mcnemar_b"] for test in tests)
    c = sum(test["mcnemar_c"] for test in tests)
    # McNemar depends on the discordant counts only: b images right only before, c right only after.
    pooled = stats.mcnemar_test(np.r_[np.ones(b), np.zeros(c)], np.r_[np.zeros(b), np.ones(c)])
    return {
        f"{prefix}_diff": float(np.mean([test["acc_diff"] for test in tests])),
        f"{prefix}_pooled_b": b,
        f"{prefix}_pooled_c": c,
        f"{prefix}_pooled_p": pooled.p_value,
        f"{prefix}_seeds_significant": sum(test["mcnemar_p"] < SIGNIFICANCE for test in tests),
        f"{prefix}_seed_p": ";".join(f"{test['mcnemar_p']:.3g}" for test in tests),
    }


def paired_effect(runs: list[Run], after: Callable[[Run], str], prefix: str) -> dict:
    """Paired head -> ``after(run)`` comparison per seed, pooled over seeds; keys start with ``prefix``."""
    return pooled_mcnemar(
        [(phase_predictions(run, "head"), phase_predictions(run, after(run)), run.metrics["test_on"]) for run in runs],
        prefix,
    )


def finetune_effect(runs: list[Run]) -> dict:
    """Paired head -> fine-tune comparison per seed, pooled over seeds."""
    return paired_effect(runs, lambda run: "finetune", "finetune")


def _accuracy_row(group: pd.DataFrame) -> dict:
    """Mean accuracy over the seeds of ``group`` with its interval (``accuracy_interval``)."""
    lo, hi, method = accuracy_interval(group)
    return {
        "n_seeds": len(group),
        "seeds": ";".join(str(seed) for seed in group.seed),
        "acc_mean": group.test_acc.mean(),
        "acc_ci_lo": lo,
        "acc_ci_hi": hi,
        "ci_method": method,
    }


def summarize(runs: list[Run], table: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset x backbone x phase: mean accuracy and interval over seeds, time, fine-tune test."""
    rows = []
    for (dataset, backbone, phase), group in table.groupby(["dataset", "backbone", "phase"], sort=False):
        row = {
            "dataset": dataset,
            "backbone": backbone,
            "phase": phase,
            **_accuracy_row(group),
            "epochs_mean": group.epochs.mean(),
            "train_seconds_mean": group.train_seconds.mean(),
            "images_per_second_mean": group.images_per_second.mean(),
        }
        paired = [
            run for run in runs if run.key[:2] == (dataset, backbone) and set(PHASES) <= set(run.metrics["phases"])
        ]
        if phase == "finetune" and paired:
            row.update(finetune_effect(paired))
        rows.append(row)
    return pd.DataFrame(rows)


def summarize_final(runs: list[Run], table: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset x backbone for the runs' final models (phase ``final``): mean accuracy and interval
    over seeds, the phases chosen, total training time, and the pooled McNemar test of final vs head."""
    rows = []
    for (dataset, backbone), group in table[table.final].groupby(["dataset", "backbone"], sort=False):
        cell = [run for run in runs if run.key[:2] == (dataset, backbone)]
        row = {
            "dataset": dataset,
            "backbone": backbone,
            "phase": "final",
            **_accuracy_row(group),
            "chosen": ";".join(f"{phase}x{count}" for phase, count in group.phase.value_counts(sort=False).items()),
            "train_seconds": table[table.metrics.isin(group.metrics)].train_seconds.sum() / len(group),
        }
        if all("head" in run.metrics["phases"] for run in cell):
            row.update(paired_effect(cell, lambda run: final_phase(run.metrics), "final_vs_head"))
        rows.append(row)
    return pd.DataFrame(rows)


ALL_DATASETS = "all datasets"


def compare_candidates(runs: list[Run], final: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """Each model's final model against a reference model's, on the same test images of the same seeds.

    The reference is ``reference`` where it ran on the dataset, else the dataset's best mean final accuracy.
    One row per dataset x model (the reference's own row has no test), plus rows for ``ALL_DATASETS``: the mean
    of the per-dataset means for models that ran on every dataset, tested against the best such model (or
    ``reference``) with the discordant pairs of every dataset and seed pooled.
    """
    if reference is not None and reference not in set(final.backbone):
        raise TLBenchError(
            f"--reference {reference}: no finished run of that model; choose one of:"
            f" {', '.join(dict.fromkeys(final.backbone))}"
        )
    by_key = {run.key: run for run in runs}
    datasets = list(dict.fromkeys(final.dataset))
    everywhere = [name for name, rows in final.groupby("backbone", sort=False) if len(rows) == len(datasets)]
    overall = final[final.backbone.isin(everywhere)].groupby("backbone", sort=False).acc_mean.mean().rename("acc_mean")

    def leader(means: pd.Series) -> str:
        return reference if reference in means.index else str(means.idxmax())

    rows = []
    for dataset in [*datasets, ALL_DATASETS]:
        if dataset == ALL_DATASETS:
            if len(datasets) < 2 or overall.empty:
                continue
            means, scope = overall, datasets
        else:
            means, scope = final[final.dataset == dataset].set_index("backbone").acc_mean, [dataset]
        best = leader(means)
        for model, acc_mean in means.items():
            row = {"dataset": dataset, "backbone": model, "acc_mean": acc_mean, "reference": best}
            pairs = [
                (final_predictions(base), final_predictions(run), run.metrics["test_on"])
                for (name, candidate, seed), run in by_key.items()
                if name in scope and candidate == model and (base := by_key.get((name, best, seed))) is not None
            ]
            if model != best and pairs:
                row.update(pooled_mcnemar(pairs, "vs_reference"))
            rows.append(row)
    return pd.DataFrame(rows)


def candidates_table(comparison: pd.DataFrame) -> pd.DataFrame:
    """Models x datasets (and all datasets): accuracy change against the reference, pooled McNemar p."""

    def cell(row: pd.Series, cells: pd.DataFrame) -> str:
        if row.name == row.reference:
            return f"{_percent(row.acc_mean)}: reference"
        if pd.isna(row.get("vs_reference_pooled_p")):
            return f"{_percent(row.acc_mean)}: no shared seeds"
        significant = row.vs_reference_pooled_p < SIGNIFICANCE
        text = (
            f"{_percent(row.acc_mean)}: {100 * row.vs_reference_diff:+.1f} pts, "
            f"p={row.vs_reference_pooled_p:.2g}{' (significant)' if significant else ''}"
        )
        return f"**{text}**" if significant else text

    return _backbone_by_dataset(comparison, comparison, cell)


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def _markdown_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _backbone_by_dataset(summary: pd.DataFrame, rows: pd.DataFrame, cell) -> pd.DataFrame:
    """Backbones x datasets of ``rows``, each present cell formatted by ``cell(row, dataset_rows)``, else a dash."""
    table = pd.DataFrame({"backbone": list(dict.fromkeys(summary.backbone))})
    for dataset in dict.fromkeys(summary.dataset):
        cells = rows[rows.dataset == dataset].set_index("backbone")
        table[dataset] = [
            cell(cells.loc[backbone], cells) if backbone in cells.index else "—" for backbone in table.backbone
        ]
    return table


def _accuracy_cell(row: pd.Series, cells: pd.DataFrame) -> str:
    """``mean [lo, hi]`` in %, in bold when the best mean of ``cells``, ``*`` for a single run."""
    text = f"{_percent(row.acc_mean)} [{_percent(row.acc_ci_lo)}, {_percent(row.acc_ci_hi)}]"
    text += "*" if row.n_seeds == 1 else ""
    return f"**{text}**" if np.isclose(row.acc_mean, cells.acc_mean.max()) else text


def accuracy_table(summary: pd.DataFrame, phase: str) -> pd.DataFrame:
    """Backbones x datasets, ``mean [lo, hi]`` in %, best mean per dataset in bold, ``*`` for single runs."""
    return _backbone_by_dataset(summary, summary[summary.phase == phase], _accuracy_cell)


def final_table(final: pd.DataFrame) -> pd.DataFrame:
    """Backbones x datasets: the final models' accuracy as in ``accuracy_table``, then the phases chosen."""
    return _backbone_by_dataset(
        final, final, lambda row, cells: f"{_accuracy_cell(row, cells)} ({row.chosen.replace(';', ', ')})"
    )


def final_vs_head_table(final: pd.DataFrame) -> pd.DataFrame:
    """Backbones x datasets: accuracy change of the final model over the head phase, pooled McNemar p."""

    def cell(row: pd.Series, cells: pd.DataFrame) -> str:
        worse = row.final_vs_head_pooled_p < SIGNIFICANCE and row.final_vs_head_diff < 0
        text = f"{100 * row.final_vs_head_diff:+.1f} pts, p={row.final_vs_head_pooled_p:.2g}: " + (
            "significantly worse" if worse else "not worse"
        )
        return f"**{text}**" if worse else text

    return _backbone_by_dataset(final, final[final.final_vs_head_pooled_p.notna()], cell)


def finetune_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Backbones x datasets: accuracy change from fine-tuning, pooled McNemar p, seeds significant alone."""

    def cell(row: pd.Series, cells: pd.DataFrame) -> str:
        verdict = ("helped" if row.finetune_diff > 0 else "hurt") if row.finetune_pooled_p < SIGNIFICANCE else "n.s."
        text = (
            f"{100 * row.finetune_diff:+.1f} pts, p={row.finetune_pooled_p:.2g}, "
            f"{int(row.finetune_seeds_significant)}/{int(row.n_seeds)} seeds: {verdict}"
        )
        return f"**{text}**" if verdict != "n.s." else text

    return _backbone_by_dataset(summary, summary[summary.finetune_pooled_p.notna()], cell)


def time_table(summary: pd.DataFrame) -> pd.DataFrame:
    table = summary[
        ["dataset", "backbone", "phase", "n_seeds", "epochs_mean", "train_seconds_mean", "images_per_second_mean"]
    ]
    return table.rename(
        columns={
            "epochs_mean": "epochs",
            "train_seconds_mean": "train s (mean)",
            "images_per_second_mean": "train images/s",
        }
    ).round(1)


def size_table(table: pd.DataFrame) -> pd.DataFrame:
    """Images per split and dataset; a range where seeds differ (per-class rounding can shift one image)."""

    def span(values: pd.Series) -> str:
        return str(values.min()) if values.min() == values.max() else f"{values.min()}–{values.max()}"

    grouped = table.groupby("dataset", sort=False)
    return pd.DataFrame(
        {column: grouped[column].agg(span) for column in ("classes", "train", "val", "test", "test_on")}
    ).reset_index()


def study_table(summary: pd.DataFrame) -> pd.DataFrame | None:
    """Our best mean accuracy per dataset beside the 2017 study's published best, for datasets it covered."""
    published = pd.read_csv(STUDY_2017).set_index("dataset")
    rows = []
    for dataset, group in summary.groupby("dataset", sort=False):
        stem = dataset_stem(dataset)
        if stem in published.index:
            best = group.loc[group.acc_mean.idxmax()]
            rows.append(
                {
                    "dataset": dataset,
                    "best here": f"{_percent(best.acc_mean)} ({best.backbone}, {best.phase})",
                    "2017 study, best test acc (published)": (
                        f"{published.loc[stem, 'best_test_acc_percent']:g} ({stem})"
                    ),
                }
            )
    return pd.DataFrame(rows) if rows else None


def default_report_dir(runs_dir: str | Path) -> Path:
    """``lightning_logs/reports/<runs folder name>``, or ``.../reports/all`` for all of ``lightning_logs``."""
    runs = Path(runs_dir).resolve()
    return default_output("reports", "all" if runs == LOGS.resolve() else runs.name)


def write_report(runs_dir: str | Path = LOGS, output: str | Path | None = None, reference: str | None = None) -> Path:
    """``report.md``, ``report.csv`` (summary rows), ``final.csv`` (final models), ``candidates.csv`` (final
    models against ``reference``, see ``compare_candidates``), ``runs.csv`` (per run and phase) and the PNG
    figures, in ``output`` (default: ``default_report_dir(runs_dir)``)."""
    output = Path(output) if output else default_report_dir(runs_dir)
    runs, left_out = collect_runs(runs_dir)
    table = run_table(runs)
    summary = summarize(runs, table)
    final = summarize_final(runs, table)
    write_csv(output / "report.csv", summary)
    write_csv(output / "final.csv", final)
    candidates = compare_candidates(runs, final, reference)
    write_csv(output / "candidates.csv", candidates)
    write_csv(output / "runs.csv", table)
    plots.plot_accuracy_bars(summary, output / "accuracy.png")
    plots.plot_time_vs_accuracy(final, output / "time_vs_accuracy.png")

    sections = [
        f"# tlbench report\n\n{len(runs)} finished runs from `{runs_dir}`"
        + (
            f"; {len(left_out)} metrics file(s) left out (unfinished, or superseded by a newer run of the same cell)."
            if left_out
            else "."
        )
    ]
    caption = (
        "Test accuracy in %: mean over seeds [95% Student-t interval over seeds]; `*` marks a single run, "
        "whose interval is its own Wilson interval (test-set sampling only). Best mean per dataset in bold."
    )
    for phase in [phase for phase in PHASES if phase in set(summary.phase)]:
        sections.append(f"## {PHASE_TITLES[phase]}\n\n{caption}\n\n{_markdown_table(accuracy_table(summary, phase))}")
    sections.append(
        "## Final model\n\nEach run's final model is the phase with the lower validation loss (ties: head); "
        f"in brackets after the interval, how often each phase was chosen. {caption}\n\n"
        f"{_markdown_table(final_table(final))}"
    )
    if "vs_reference_pooled_p" in candidates:
        sections.append(
            "## Candidates compared\n\nFinal-model test accuracy in % (mean over seeds), and its change against "
            "the reference on the same test images of the same seeds: exact McNemar test with the discordant pairs "
            "of all seeds (and, for all datasets, of every dataset) pooled. The reference is "
            + (f"`{reference}`" if reference else "the best mean per column")
            + f"; {ALL_DATASETS}: the mean of the per-dataset means, for models run on every dataset. "
            f"Bold: significant (p < {SIGNIFICANCE:g}).\n\n{_markdown_table(candidates_table(candidates))}"
        )
    if "final_vs_head_pooled_p" in final:
        sections.append(
            "## Is the final model worse than its head phase?\n\n"
            "Change in test accuracy from the head phase to the final model (mean over seeds; 0 where the head "
            "was chosen), exact McNemar test with the discordant pairs of all seeds pooled. "
            f"Bold: significantly worse (p < {SIGNIFICANCE:g}).\n\n"
            f"{_markdown_table(final_vs_head_table(final))}"
        )
    if "finetune_pooled_p" in summary:
        sections.append(
            "## Did fine-tuning help?\n\n"
            "Change in test accuracy from the head phase to the fine-tune phase (mean over seeds), "
            "exact McNemar test on the same test images with the discordant pairs of all seeds pooled,"
            f" and how many seeds are significant on their own (p < {SIGNIFICANCE:g}). Bold: significant pooled.\n\n"
            f"{_markdown_table(finetune_table(summary))}"
        )
    sections.append(
        "## Training time\n\nPer phase, mean over seeds; images/s = train images x epochs / training seconds "
        f"(training epochs only).\n\n{_markdown_table(time_table(summary))}"
    )
    sections.append(f"## Datasets\n\nImages per split (as split by each run).\n\n{_markdown_table(size_table(table))}")
    published = study_table(summary)
    if published is not None:
        sections.append(
            "## The 2017 study\n\nThe study's published best test accuracies were measured on the full datasets "
            "with its own single split: a reference point, not a paired comparison.\n\n" + _markdown_table(published)
        )
    sections.append(
        "## Figures\n\n![accuracy](accuracy.png)\n\n![time vs accuracy](time_vs_accuracy.png)\n\n"
        "Per-run numbers: `runs.csv`; the tables above: `report.csv`."
    )
    path = output / "report.md"
    return write_text(path, "\n\n".join(sections) + "\n")
