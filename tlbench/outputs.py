"""One output root: whatever a command writes by default goes under ``./lightning_logs/``.

Each command has its own sub-folder, so two commands never overwrite each other's files, one ``.gitignore``
entry covers everything, and ``tensorboard --logdir lightning_logs`` finds every run, hand-typed or from a grid:

    lightning_logs/<experiment>/version_N/        fit runs, grid cells included
    lightning_logs/grids/<grid>/                  a grid's status files and per-cell logs
    lightning_logs/reports/<runs folder>/         report
    lightning_logs/check/<dataset>_<backbone>/    check
    lightning_logs/audit/<dataset>/               data audit
    lightning_logs/splits/<dataset>_seed<N>.csv   data split

An explicit ``--output`` always wins.
"""

from __future__ import annotations

from pathlib import Path

LOGS = Path("lightning_logs")


def default_output(kind: str, name: str) -> Path:
    """``lightning_logs/<kind>/<name>``, relative to the working directory as Lightning's own runs are."""
    return LOGS / kind / name


def dataset_name(root: str | Path) -> str:
    """The name a data root goes by in output paths: its folder name, as in fit's default experiment name."""
    return Path(root).resolve().name
