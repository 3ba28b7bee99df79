"""The run directory contract: where a run's files live, which version is the latest, whether a run finished,
and the one reader and writer of ``metrics.json``.

A run of experiment ``E`` writes ``<root>/lightning_logs/E/version_N/`` (metrics.json, split.csv, history.csv,
predictions, reports and TensorBoard events) and keeps its checkpoints in the mirror folder
``<root>/checkpoints/E/version_N/``. The run directory is the log folder of the run's ``TensorBoardLogger``: a
trainer given other loggers (CSV, MLflow, several at once, or ones whose ``log_dir`` is None) gets that logger
added beside them, so the layout never depends on which logger a user picked.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import TYPE_CHECKING

from tlbench.errors import TLBenchError
from tlbench.evaluation.final import final_phase
from tlbench.io import read_json, write_json
from tlbench.outputs import LOGS

if TYPE_CHECKING:  # Lightning costs seconds to import; report, test and the metrics readers never need it
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger

CHECKPOINTS = "checkpoints"
METRICS = "metrics.json"
VERSION = re.compile(r"version_(\d+)")


def experiment_name(dataset: str, backbone: str) -> str:
    """The default run name, ``<dataset folder>_<backbone>``: registry names as given, the last part of an
    ``hf-hub:`` or ``local-dir:`` id, whose slashes and colon would otherwise nest folders."""
    source, _, model_id = backbone.partition(":")
    label = Path(model_id).name if source in ("hf-hub", "local-dir") and model_id else backbone
    return f"{dataset}_{label}"


def run_logger(trainer: pl.Trainer) -> TensorBoardLogger | None:
    """The logger whose folder is the run directory: the trainer's first TensorBoard logger."""
    from pytorch_lightning.loggers import TensorBoardLogger

    return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)


def _lightning_default(logger: TensorBoardLogger, trainer: pl.Trainer) -> bool:
    """Lightning's own default logger (``lightning_logs/version_N``, no experiment name)."""
    return logger.name == LOGS.name and Path(logger.root_dir).parent == Path(trainer.default_root_dir)


def _unwritable(folder: Path, error: OSError) -> TLBenchError:
    """One line naming the folder a run cannot create and the fix: a read-only working or output folder, or a file
    where a folder should be, is the user's to change, not a traceback."""
    where = (error.strerror or str(error)) + (f": {error.filename}" if error.filename else "")
    return TLBenchError(
        f"cannot create a run folder in {folder} ({where}); run from a folder you can write to, or pass"
        " --trainer.default_root_dir DIR (output=DIR in the Python API)"
    )


def claim_version(folder: Path, checkpoints: Path | None = None) -> int:
    """Create ``folder/version_N`` for the next free ``N`` (and ``checkpoints/version_N``, its checkpoint folder,
    when given) and return ``N``.

    ``mkdir`` is atomic: of fits started at once in one folder, each gets a folder of its own (one that loses the
    race takes the next number), where a number picked by listing the folder would be shared by all of them. Both
    folders are made before anything is written, so a place the run cannot write stops it in one line
    (``_unwritable``) before training rather than at its first checkpoint, and leaves no version folder behind.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        version = max(
            (int(match.group(1)) for path in folder.iterdir() if (match := VERSION.fullmatch(path.name))), default=-1
        )
        while True:
            version += 1
            try:
                (folder / f"version_{version}").mkdir()
            except FileExistsError:
                continue
            break
    except OSError as error:
        raise _unwritable(folder, error) from None
    if checkpoints is not None:
        try:
            (checkpoints / f"version_{version}").mkdir(parents=True, exist_ok=True)
        except OSError as error:
            (folder / f"version_{version}").rmdir()
            raise _unwritable(checkpoints, error) from None
    return version


def install_run_logger(
    trainer: pl.Trainer, experiment: str, version: int | None = None, checkpoints: bool = True
) -> TensorBoardLogger:
    """Give ``trainer`` the run's TensorBoard logger at ``<root>/lightning_logs/<experiment>/version_N``.

    A TensorBoard logger the user configured is kept as the run's; Lightning's unnamed default one is replaced;
    any other loggers stay beside it. ``version`` resumes an earlier run's folder; a new run claims its folder
    here, before anything is written (``claim_version``), with its checkpoint folder unless ``checkpoints`` is
    False (validate, test and predict save none). Only rank zero claims: under DDP the other ranks never
    write the run directory, and take its checkpoint folder from rank zero (``ModelCheckpoint`` broadcasts it).
    """
    from pytorch_lightning.loggers import TensorBoardLogger

    loggers = list(trainer.loggers)
    existing = run_logger(trainer)
    if existing is not None and not _lightning_default(existing, trainer):
        return existing
    save_dir = Path(trainer.default_root_dir) / LOGS
    if version is None and trainer.global_rank == 0:
        mirror = Path(trainer.default_root_dir) / CHECKPOINTS / experiment if checkpoints else None
        version = claim_version(save_dir / experiment, mirror)
    logger = TensorBoardLogger(save_dir=str(save_dir), name=experiment, version=version)
    trainer.loggers = [logger, *(other for other in loggers if other is not existing)]
    return logger


def run_dir(trainer: pl.Trainer) -> Path:
    """The run directory; a trainer built without tlbench's CLI or API gets the run logger on first use.

    Unlike ``trainer.log_dir`` (a broadcast under DDP) this is safe to call from rank zero alone, the only rank
    that writes there.
    """
    logger = run_logger(trainer)
    if logger is None or _lightning_default(logger, trainer):
        module, datamodule = trainer.lightning_module, trainer.datamodule
        logger = install_run_logger(trainer, experiment_name(datamodule.dataset_name, module.hparams.backbone))
    return Path(logger.log_dir)


def checkpoint_dir(trainer: pl.Trainer) -> Path:
    """``<root>/checkpoints/<experiment>/version_N``, mirroring the run directory."""
    folder = run_dir(trainer)
    return Path(trainer.default_root_dir) / CHECKPOINTS / folder.parent.name / folder.name


def run_dir_of_checkpoint(checkpoint: str | Path) -> Path | None:
    """``<root>/checkpoints/E/version_N/x.ckpt`` -> ``<root>/lightning_logs/E/version_N`` when that folder exists."""
    folder = Path(checkpoint).resolve().parent
    if not VERSION.fullmatch(folder.name) or folder.parents[1].name != CHECKPOINTS:
        return None
    candidate = folder.parents[2] / LOGS / folder.parent.name / folder.name
    return candidate if candidate.is_dir() else None


def _versions(folder: Path, marker: str) -> list[tuple[int, Path]]:
    """``(N, version_N/marker)`` for every version folder of ``folder`` that holds ``marker``."""
    found = []
    for path in folder.glob(f"version_*/{marker}"):
        match = VERSION.fullmatch(path.parent.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(root: Path, experiment: str) -> tuple[int, Path]:
    """The highest ``version_N`` of ``experiment`` that has a ``last.ckpt``."""
    runs = _versions(Path(root) / CHECKPOINTS / experiment, "last.ckpt")
    if not runs:
        raise TLBenchError(
            f"--ckpt_path last: no {CHECKPOINTS}/{experiment}/version_*/last.ckpt under {root};"
            " start without --ckpt_path"
        )
    return runs[-1]


def has_checkpoint(root: Path, experiment: str) -> bool:
    return bool(_versions(Path(root) / CHECKPOINTS / experiment, "last.ckpt"))


def is_finished(metrics_path: Path) -> bool:
    """A ``fit`` whose training ended and whose every phase was tested (it adds ``test_acc`` per phase last of all).
    A ``test`` of an earlier checkpoint writes phases with ``test_acc`` too, but no ``dataset``: it re-evaluates a
    run and never stands for one (a grid cell it shared an experiment with is not done)."""
    try:
        metrics = read_json(metrics_path)
    except (OSError, ValueError):
        return False
    if not isinstance(metrics, dict) or "dataset" not in metrics:
        return False
    phases = metrics.get("phases") or {}
    return bool(phases) and all("test_acc" in phase for phase in phases.values())


def finished_metrics(root: Path, experiment: str) -> Path | None:
    """The newest finished ``metrics.json`` of ``experiment`` under ``<root>/lightning_logs``, if any."""
    finished = [path for _, path in _versions(Path(root) / LOGS / experiment, METRICS) if is_finished(path)]
    return finished[-1] if finished else None


def read_metrics(folder: str | Path) -> dict:
    """A run's ``metrics.json``; a missing or damaged file is one line naming it."""
    path = Path(folder) / METRICS
    if not path.is_file():
        raise TLBenchError(
            f"{folder} is not a tlbench run directory (no {METRICS}); pass a run directory written by fit"
        )
    try:
        metrics = read_json(path)
    except (OSError, ValueError) as error:
        raise TLBenchError(f"{path} is damaged ({type(error).__name__}); rerun the fit that wrote it") from None
    if not isinstance(metrics, dict):
        raise TLBenchError(f"{path} is damaged (not a JSON object); rerun the fit that wrote it")
    return metrics


def merge(base: dict, update: dict) -> dict:
    """``base`` with ``update`` merged in: nested mappings merge key by key, other values replace."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        merged[key] = (
            merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def update_metrics(folder: str | Path, update: dict) -> dict:
    """Merge ``update`` into the run's ``metrics.json`` (created if missing) and return the result."""
    path = Path(folder) / METRICS
    metrics = merge(read_metrics(folder) if path.is_file() else {}, update)
    write_json(path, metrics)
    return metrics


def write_metrics(folder: str | Path, metrics: dict) -> Path:
    """Replace the run's ``metrics.json`` (the end of training starts it afresh, so a resumed run keeps no stale
    test results)."""
    return write_json(Path(folder) / METRICS, metrics)


def checkpoint_for_run(run_dir: Path, phase: str | None) -> Path:
    """The best checkpoint of ``phase`` recorded in a run's metrics.json; by default the run's final model (the
    phase with the better validation loss, ``metrics.json["final"]``)."""
    metrics = read_metrics(run_dir)
    phases = metrics.get("phases", {})
    trained = [name for name, phase_metrics in phases.items() if phase_metrics.get("best_ckpt")]
    if not trained:
        raise TLBenchError(f"{run_dir}/metrics.json lists no trained phase; finish the run or pass a .ckpt file")
    chosen = phase or final_phase(metrics)
    if chosen not in trained:
        raise TLBenchError(f"{run_dir} has no '{chosen}' phase; pass --phase with one of: {', '.join(trained)}")
    return Path(phases[chosen]["best_ckpt"])
