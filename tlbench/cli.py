"""``TLBenchCLI``: LightningCLI for fit/validate/test/predict with tlbench's run layout.

Every knob is a LightningCLI option (``--model.backbone resnet50``, ``--data.batch_size 16``). On top of
plain LightningCLI this adds: bare config names resolved in ``configs/``, a TensorBoard logger at
``lightning_logs/<experiment>/version_N`` (checkpoints mirror it under ``checkpoints/``), ``--ckpt_path last``
meaning "the latest run of this experiment", and, after ``fit``, a test of each phase's best checkpoint (with
its evaluation report), learning curves, a paired head-vs-finetune comparison and a printed summary.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger

from tlbench.callbacks.recorder import run_dir
from tlbench.configs import resolve_config_path
from tlbench.data.datamodule import ImageFolderDataModule
from tlbench.data.split import read_split
from tlbench.errors import TLBenchError
from tlbench.evaluation.runs import finish_run
from tlbench.evaluation.summary import format_summary
from tlbench.models.module import TransferLearningModule

TRAINER_DEFAULTS = {"log_every_n_steps": 1, "num_sanity_val_steps": 0}


def resolve_config_args(argv: list[str]) -> list[str]:
    resolved, take_next = [], False
    for arg in argv:
        if take_next:
            resolved.append(resolve_config_path(arg))
            take_next = False
        elif arg == "--config":
            resolved.append(arg)
            take_next = True
        elif arg.startswith("--config="):
            resolved.append("--config=" + resolve_config_path(arg.split("=", 1)[1]))
        else:
            resolved.append(arg)
    return resolved


def latest_checkpoint(root: Path, experiment: str) -> tuple[int, Path]:
    """The highest ``version_N`` of ``experiment`` that has a ``last.ckpt``."""
    runs = []
    for path in (root / "checkpoints" / experiment).glob("version_*/last.ckpt"):
        match = re.fullmatch(r"version_(\d+)", path.parent.name)
        if match:
            runs.append((int(match.group(1)), path))
    if not runs:
        raise TLBenchError(f"--ckpt_path last: no checkpoints/{experiment}/version_*/last.ckpt under {root}; start without --ckpt_path")
    return max(runs)


def describe_data_change(previous: pd.DataFrame, current: pd.DataFrame) -> str:
    """'' when both manifests list the same files, labels, splits and contents, else what changed."""
    columns = [c for c in ("path", "label", "split", "sha256") if c in previous.columns and c in current.columns]
    before = {tuple(row) for row in previous[columns].astype(str).itertuples(index=False)}
    after = {tuple(row) for row in current[columns].astype(str).itertuples(index=False)}
    old_paths, new_paths = {row[0] for row in before}, {row[0] for row in after}
    changed = {row[0] for row in before ^ after} & old_paths & new_paths
    parts = [f"{len(new_paths - old_paths)} added", f"{len(old_paths - new_paths)} removed", f"{len(changed)} changed in content, label or split"]
    return ", ".join(parts) if before != after else ""


class TLBenchCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        self.resume_version: int | None = None
        super().__init__(
            TransferLearningModule,
            ImageFolderDataModule,
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,  # a top-level optimizer would train every parameter, breaking freezing
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--experiment", type=str | None, default=None,
                            help="run name under lightning_logs/ and checkpoints/ (default: <dataset folder>_<backbone>)")
        parser.add_argument("--force", type=bool, default=False,
                            help="with --ckpt_path last: resume even if the data changed since the checkpoint")
        parser.link_arguments(("model.head_epochs", "model.finetune_epochs"), "trainer.max_epochs", compute_fn=lambda head, finetune: head + finetune)

    def _active_config(self):
        """The parsed config of the running subcommand (the whole config when run without one)."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def experiment_name(self) -> str:
        config = self._active_config()
        return config.get("experiment") or f"{Path(config.data.root).name}_{config.model.backbone}"

    def before_instantiate_classes(self) -> None:
        config = self._active_config()
        if self.subcommand == "fit" and config.get("ckpt_path") == "last":
            root = Path(config.trainer.default_root_dir or ".")
            self.resume_version, path = latest_checkpoint(root, self.experiment_name())
            config.ckpt_path = str(path)

    def before_fit(self) -> None:
        if self.resume_version is None:
            return
        previous = read_split(run_dir(self.trainer) / "split.csv")
        current = self.datamodule.prepare_split()
        change = describe_data_change(previous, current)
        if change and not self._active_config().get("force"):
            raise TLBenchError(f"the data under {self.datamodule.root} changed since the checkpoint ({change}); resuming would mix datasets: pass --force to resume anyway, or start a new run without --ckpt_path")

    def _instantiate_trainer(self, config: dict, callbacks: list):
        if config.get("logger") in (None, True):
            root = Path(config.get("default_root_dir") or ".")
            config["logger"] = TensorBoardLogger(save_dir=str(root / "lightning_logs"), name=self.experiment_name(), version=self.resume_version)
        return super()._instantiate_trainer(config, callbacks)

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.interrupted or trainer.state.status.value != "finished":
            return
        for callback in trainer.checkpoint_callbacks:
            if getattr(callback, "phase", None) and callback.best_model_path:
                trainer.test(self.model, datamodule=self.datamodule, ckpt_path=callback.best_model_path, verbose=False)
        if trainer.is_global_zero:
            print(format_summary(finish_run(run_dir(trainer))))


def run_lightning_cli(argv: list[str]) -> TLBenchCLI:
    """Run LightningCLI on ``argv`` as if typed (it reads ``sys.argv`` itself; passing ``args`` too only warns)."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "tlbench", *resolve_config_args(argv)]
    try:
        return TLBenchCLI()
    finally:
        sys.argv = saved
