"""``tlbench report [RUNS_DIR]``: the study's tables and figures from a folder of finished runs."""

from __future__ import annotations

from tlbench.report import write_report


def report(runs_dir: str = "lightning_logs", output: str | None = None, reference: str | None = None) -> None:
    """Tabulate the finished runs under RUNS_DIR into OUTPUT: report.md and its CSVs and figures.

    The files: report.md, report.csv, final.csv, candidates.csv, runs.csv, accuracy.png and time_vs_accuracy.png.

    Reads only the metrics.json files under RUNS_DIR (recursively) and the predictions CSVs they name; the
    newest finished run of each dataset x backbone x seed counts.

    Args:
        runs_dir: folder holding run directories: lightning_logs (every run and grid here), or a grid's --output.
        output: folder for the report files (default: lightning_logs/reports/<RUNS_DIR name>, "all" for
            lightning_logs itself).
        reference: the model (recipe or backbone) every other is compared with in "Candidates compared", e.g.
            default; by default each dataset's best mean final accuracy.
    """
    print(f"report: {write_report(runs_dir, output, reference)}")
