"""``python -m tlbench report RUNS_DIR``: the study's tables and figures from a folder of finished runs."""

from __future__ import annotations

from tlbench.report import write_report


def report(runs_dir: str, output: str = "report") -> None:
    """Write OUTPUT/report.md, report.csv, runs.csv, accuracy.png and time_vs_accuracy.png.

    Reads only the metrics.json files under RUNS_DIR (recursively) and the predictions CSVs they name; the
    newest finished run of each dataset x backbone x seed counts.

    Args:
        runs_dir: folder holding run directories, e.g. a grid's --output.
        output: folder for the report files.
    """
    print(f"report: {write_report(runs_dir, output)}")
