"""``TLBenchCLI``: LightningCLI for fit/validate/test/predict with tlbench's run layout.

Every knob is a LightningCLI option (``--model.backbone resnet50``, ``--data.batch_size 16``). On top of
plain LightningCLI this adds: bare config names resolved in ``configs/``, a TensorBoard logger at
``lightning_logs/<experiment>/version_N`` (checkpoints mirror it under ``checkpoints/``), ``--ckpt_path last``
meaning "the latest run of this experiment" (refused when the data changed since), and ``test`` of a run's saved
``config.yaml`` without ``--ckpt_path`` testing that run's final model. What happens after ``fit``
(each phase's best checkpoint tested, reports, summary) is the module's ``TestBestPhases`` callback, so the
Python API and plain Lightning get it too.
"""

from __future__ import annotations

import sys
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import pandas as pd
from pytorch_lightning import Trainer
from pytorch_lightning.cli import LightningCLI

from tlbench.api import TRAINER_DEFAULTS
from tlbench.configs import resolve_config_args
from tlbench.data.datamodule import ImageFolderDataModule
from tlbench.data.split import read_split
from tlbench.errors import TLBenchError, one_line
from tlbench.models.loading import read_checkpoint
from tlbench.models.module import TransferLearningModule
from tlbench.rundir import (
    METRICS,
    VERSION,
    checkpoint_for_run,
    experiment_name,
    install_run_logger,
    latest_checkpoint,
    read_metrics,
    run_dir,
)

# --ckpt_path values Lightning resolves itself rather than reading as a file.
LIGHTNING_CHECKPOINT_NAMES = ("best", "last", "hpc", "registry")
# What --ckpt_path means in tlbench, replacing Lightning's text about its own checkpoint names.
CKPT_PATH_HELP = {
    "fit": "resume from this checkpoint, or 'last': the newest run of this experiment, from its last.ckpt"
    " (refused if the data changed since; --force resumes anyway)",
    "test": "the checkpoint to test (default, with --config RUN/config.yaml: that run's final model)",
}
# ``predict --help``: Lightning's own line ("Run inference on your data") does not say that tlbench has a simpler
# command for labelling new images.
PREDICT_DESCRIPTION = (
    "Lightning's predict: a run's config.yaml (--config) and a checkpoint (--ckpt_path) through the Trainer,"
    " writing predictions_predict.csv into that run directory (the test split, or --data.predict_dir DIR)."
    " To label new images, use 'tlbench classify RUN IMAGE_OR_DIR...': it needs only the run directory."
)
# ``fit -h``: the options most runs set; ``fit --help`` lists all of them.
SHORT_FIT_HELP = """usage: tlbench fit [--config NAME|PATH] [--data.root DIR] [OPTIONS]   (fit --help: every option)

  --config NAME|PATH        a shipped config (birds_efficientnet_lite2.yaml) or your own YAML
  --data.root DIR           the image folder (class folders, train/val/test folders, or a labels CSV)
  --data.dedupe BOOL        drop duplicate images that span train/val/test instead of refusing (default false)
  --data.batch_size N       images per batch (default {data.batch_size})
  --model.backbone NAME     timm name or embedded offline weights (default {model.backbone})
  --model.head_epochs N     epochs of the new head on the frozen backbone (default {model.head_epochs})
  --model.finetune_epochs N fine-tuning epochs; 0 = head only (default: the budget rule)
  --model.unfreeze_blocks N top block groups fine-tuned; -1 = all (default {model.unfreeze_blocks})
  --model.input_size PX     input side (default: the backbone's)
  --model.engine NAME       auto | torch | onnxruntime for passes with no gradient (default {model.engine})
  --seed_everything N       seed of initialisation, batch order, augmentation (default 0)
  --trainer.accelerator A   cpu | gpu | auto (default auto)
  --trainer.devices N       devices to use (default auto)
  --trainer.precision P     32 | 16-mixed | bf16-mixed (default 32)
  --ckpt_path last          resume the newest run of this experiment from its last.ckpt
  --print_config            print the resolved config and exit
"""


def describe_data_change(previous: pd.DataFrame, current: pd.DataFrame) -> str:
    """'' when both manifests list the same files, labels, splits and contents, else what changed."""
    columns = [c for c in ("path", "label", "split", "sha256") if c in previous.columns and c in current.columns]
    before = {tuple(row) for row in previous[columns].astype(str).itertuples(index=False)}
    after = {tuple(row) for row in current[columns].astype(str).itertuples(index=False)}
    old_paths, new_paths = {row[0] for row in before}, {row[0] for row in after}
    changed = {row[0] for row in before ^ after} & old_paths & new_paths
    parts = [
        f"{len(new_paths - old_paths)} added",
        f"{len(old_paths - new_paths)} removed",
        f"{len(changed)} changed in content, label or split",
    ]
    return ", ".join(parts) if before != after else ""


class TLBenchCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True, prog: str = "tlbench") -> None:
        self.resume_version: int | None = None
        try:
            super().__init__(
                TransferLearningModule,
                ImageFolderDataModule,
                trainer_defaults=TRAINER_DEFAULTS,
                seed_everything_default=0,
                save_config_kwargs={"overwrite": True},
                # a bad flag or config key: one error line (run_lightning_cli); usage lines say tlbench, not __main__.py
                parser_kwargs={"exit_on_error": False, "prog": prog},
                auto_configure_optimizers=False,  # a top-level optimizer would train every parameter, breaking freezing
                args=args,
                run=run,
            )
        except SystemExit:
            # Lightning ends a Ctrl-C'd run with exit(1) after its graceful shutdown; tlbench treats every Ctrl-C alike
            # (one "interrupted" line, status 130), whether it came during training or before.
            if getattr(self, "trainer", None) is not None and self.trainer.interrupted:
                raise KeyboardInterrupt from None
            raise

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any):
        """Lightning's parser for ``subcommand`` with ``--ckpt_path`` explained as tlbench reads it (Lightning has no
        public hook for a method argument's help; tests/test_lightning_contract.py guards this one), and ``predict``
        described as the Lightning route it is, pointing at ``classify``."""
        if subcommand == "predict":
            kwargs["description"] = PREDICT_DESCRIPTION
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in CKPT_PATH_HELP:
            parser._option_string_actions["--ckpt_path"].help = CKPT_PATH_HELP[subcommand]
        return parser

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--experiment",
            type=str | None,
            default=None,
            help="run name under lightning_logs/ and checkpoints/ (default: <dataset folder>_<backbone>)",
        )
        parser.add_argument(
            "--force",
            type=bool,
            default=False,
            help="with --ckpt_path last: resume even if the data changed since the checkpoint",
        )
        parser.link_arguments(
            ("model.head_epochs", "model.finetune_epochs"),
            "trainer.max_epochs",
            compute_fn=lambda head, finetune: None if finetune is None else head + finetune,
        )

    def _active_config(self):
        """The parsed config of the running subcommand (the whole config when run without one)."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def experiment_name(self) -> str:
        config = self._active_config()
        return config.get("experiment") or experiment_name(Path(config.data.root).resolve().name, config.model.backbone)

    def before_instantiate_classes(self) -> None:
        config = self._active_config()
        if self.subcommand == "fit" and config.get("ckpt_path") == "last":
            root = Path(config.trainer.default_root_dir or ".")
            self.resume_version, path = latest_checkpoint(root, self.experiment_name())
            config.ckpt_path = str(path)
        if self.subcommand == "test" and not config.get("ckpt_path"):
            run = self._run_of_config()
            if run is not None:
                config.ckpt_path = str(checkpoint_for_run(run, None))
                print(f"testing the final model of {run}: {config.ckpt_path} (--ckpt_path tests another checkpoint)")
        if config.get("ckpt_path") and config.ckpt_path not in LIGHTNING_CHECKPOINT_NAMES:
            read_checkpoint(config.ckpt_path, mmap=True)  # missing or damaged: one line now, not Lightning's traceback

    def _run_of_config(self) -> Path | None:
        """The run directory whose saved ``config.yaml`` was given with ``--config`` (the last such), if any; a run
        folder without a readable metrics.json (a run that never finished) is refused rather than testing an
        untrained model."""
        for path in reversed(self._active_config().get("config") or []):
            folder = Path(str(getattr(path, "absolute", path))).parent
            if (folder / METRICS).is_file() or VERSION.fullmatch(folder.name):
                read_metrics(folder)
                return folder
        return None

    def _install_run_logger(self) -> None:
        """Every subcommand logs to ``lightning_logs/<experiment>/version_N`` (the resumed version with
        ``--ckpt_path last``), beside any loggers given with ``--trainer.logger``; a new fit claims its checkpoint
        folder with it, so a place it cannot write stops it before training."""
        install_run_logger(self.trainer, self.experiment_name(), self.resume_version, self.subcommand == "fit")

    before_validate = before_test = before_predict = _install_run_logger

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Read the data before the Trainer exists: a bad data root or predict folder is then the command's only
        output (besides the seed line), not an error after Lightning's device report, and no run folder is made."""
        if self.subcommand == "predict" and self.datamodule.predict_dir is not None:
            self.datamodule.predict_rows()  # lists and scans that folder only
        elif self.subcommand:
            self.datamodule.discover()  # lists files only: the decoding pre-flight needs the run folder for its reports
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        self._install_run_logger()
        if self.resume_version is None:
            return
        previous = read_split(run_dir(self.trainer) / "split.csv")
        current = self.datamodule.prepare_split()
        change = describe_data_change(previous, current)
        if change and not self._active_config().get("force"):
            raise TLBenchError(
                f"the data under {self.datamodule.root} changed since the checkpoint ({change});"
                " resuming would mix datasets: pass --force to resume anyway, or start a new run without --ckpt_path"
            )


def short_fit_help() -> str:
    """``SHORT_FIT_HELP`` with the defaults read from the module and data module, so it cannot drift from them."""
    import inspect
    from types import SimpleNamespace

    def defaults(cls: type) -> SimpleNamespace:
        return SimpleNamespace(**{name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()})

    return SHORT_FIT_HELP.format(model=defaults(TransferLearningModule), data=defaults(ImageFolderDataModule))


def run_lightning_cli(argv: list[str]) -> TLBenchCLI | None:
    """Run LightningCLI on ``argv`` as if typed (it reads ``sys.argv`` itself; passing ``args`` too only warns);
    ``fit -h`` prints the short help instead (None)."""
    if argv[:1] == ["fit"] and "-h" in argv:
        print(short_fit_help(), end="")
        return None
    ckpt_path = next((value for flag, value in zip(argv, argv[1:]) if flag == "--ckpt_path"), None)
    ckpt_path = next((arg.split("=", 1)[1] for arg in argv if arg.startswith("--ckpt_path=")), ckpt_path)
    if ckpt_path and ckpt_path not in LIGHTNING_CHECKPOINT_NAMES:
        read_checkpoint(ckpt_path, mmap=True)  # LightningCLI itself loads it unguarded while parsing
    saved = sys.argv
    sys.argv = [saved[0] if saved else "tlbench", *resolve_config_args(argv)]
    try:
        return TLBenchCLI()
    except ArgumentError as error:
        raise TLBenchError(f"{one_line(str(error))}; run 'tlbench {argv[0]} --help' for the options") from None
    finally:
        sys.argv = saved
