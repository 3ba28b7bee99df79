"""The Python API (``tlbench.fit`` / ``tlbench.load``) and plain Lightning give the same run directory as the CLI."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger

from tests.conftest import REPO, TINY_FIT_ARGS, make_dataset, run_cli
from tests.helpers import InterruptAtSetup, NoDirLogger
from tlbench.errors import TLBenchError

TINY = {
    "pretrained": False,
    "input_size": 32,
    "head_hidden": 16,
    "head_epochs": 1,
    "finetune_epochs": 1,
    "unfreeze_blocks": -1,
    "batch_size": 8,
    "num_workers": 0,
}
QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu"}


def test_readme_snippet_in_a_fresh_process(tmp_path):
    """tlbench/api.py's five example lines, verbatim but for the paths, with the real default backbone and weights."""
    data = make_dataset(tmp_path / "images", classes=2, per_class=8, size=64)
    images = sorted(str(p) for p in (data / "class_0").glob("*.png"))[:2]
    snippet = textwrap.dedent(f"""
        import tlbench
        run = tlbench.fit({str(data)!r}, backbone="efficientnet_lite0", head_epochs=3, finetune_epochs=1, num_workers=0,
                          trainer={{"enable_progress_bar": False}})
        print(run.metrics["phases"]["finetune"]["test_acc"], run.dir)
        model = tlbench.load(run.dir)
        print(model.predict({images!r}))
    """)
    result = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={
            "PYTHONPATH": str(REPO),
            "PATH": "/usr/bin:/bin",
            "OMP_NUM_THREADS": "2",
            "TLBENCH_CACHE_DIR": str(tmp_path / "cache"),
            "HOME": str(tmp_path),
        },
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "site-packages" not in result.stderr, f"a dependency's warning reached the user: {result.stderr[-3000:]}"
    run_dir = tmp_path / "lightning_logs" / "images_efficientnet_lite0" / "version_0"
    assert f" {run_dir}\n" in result.stdout
    assert (run_dir / "metrics.json").is_file() and (
        tmp_path / "checkpoints" / "images_efficientnet_lite0" / "version_0"
    ).is_dir()
    predictions = result.stdout.strip().splitlines()[-1]
    assert predictions.count("Prediction(") == 2 and "probabilities={'class_0':" in predictions


def test_plain_lightning_trainer_gets_the_run_layout_and_the_epoch_budget(tiny_dataset, tmp_path):
    """``Trainer().fit(module, datamodule)`` with Lightning's defaults: the schedule sets max_epochs to head +
    finetune (not Lightning's 1000), each phase's best checkpoint is tested, and the run lands in the same layout."""
    from tlbench.data.datamodule import ImageFolderDataModule
    from tlbench.models.module import TransferLearningModule
    from tlbench.rundir import read_metrics

    module = TransferLearningModule(
        backbone="cnn1", **{k: v for k, v in TINY.items() if k not in ("batch_size", "num_workers")}
    )
    datamodule = ImageFolderDataModule(str(tiny_dataset), batch_size=8, num_workers=0)
    trainer = pl.Trainer(default_root_dir=str(tmp_path), num_sanity_val_steps=0, **QUIET)
    trainer.fit(module, datamodule)
    assert trainer.current_epoch == 2
    run = tmp_path / "lightning_logs" / "tiny_cnn1" / "version_0"
    metrics = read_metrics(run)
    assert set(metrics["phases"]) == {"head", "finetune"}
    assert all("test_acc" in phase for phase in metrics["phases"].values())
    assert Path(metrics["checkpoint_dir"]) == (tmp_path / "checkpoints" / "tiny_cnn1" / "version_0").resolve()
    assert list(run.glob("events.out.tfevents.*"))


def test_max_epochs_that_disagrees_with_the_phases_is_refused(tiny_dataset, tmp_path):
    from tlbench.data.datamodule import ImageFolderDataModule
    from tlbench.models.module import TransferLearningModule

    module = TransferLearningModule(
        backbone="cnn1", **{k: v for k, v in TINY.items() if k not in ("batch_size", "num_workers")}
    )
    trainer = pl.Trainer(default_root_dir=str(tmp_path), max_epochs=5, **QUIET)
    with pytest.raises(TLBenchError, match=r"max_epochs=5.*head_epochs \+ finetune_epochs = 2"):
        trainer.fit(module, ImageFolderDataModule(str(tiny_dataset), batch_size=8, num_workers=0))


@pytest.mark.parametrize(
    "make_loggers",
    [lambda root: [NoDirLogger()], lambda root: [CSVLogger(str(root / "csv")), NoDirLogger()]],
    ids=["log_dir-None", "csv-and-log_dir-None"],
)
def test_any_logger_keeps_the_run_directory(tiny_dataset, tmp_path, make_loggers):
    import tlbench

    loggers = make_loggers(tmp_path)
    run = tlbench.fit(tiny_dataset, backbone="cnn1", output=tmp_path, trainer={**QUIET, "logger": loggers}, **TINY)
    assert run.dir == tmp_path / "lightning_logs" / "tiny_cnn1" / "version_0"
    assert all("test_acc" in phase for phase in run.metrics["phases"].values())
    assert list(run.dir.glob("events.out.tfevents.*")), "TensorBoard files are still written in the run directory"
    assert any("val_loss" in entry for entry in loggers[-1].logged), "the user's own logger still receives the metrics"
    if isinstance(loggers[0], CSVLogger):
        assert "val_loss" in (Path(loggers[0].log_dir) / "metrics.csv").read_text()


def test_unknown_option_is_one_line_with_close_matches(tiny_dataset):
    import tlbench

    with pytest.raises(TLBenchError, match=r"unknown option 'head_epoch' \(did you mean head_epochs"):
        tlbench.fit(tiny_dataset, head_epoch=3)


def test_cli_with_csv_logger(tiny_dataset, tmp_path):
    result = run_cli(
        "fit",
        "--data.root",
        str(tiny_dataset),
        *TINY_FIT_ARGS,
        "--trainer.logger",
        "CSVLogger",
        "--trainer.logger.save_dir",
        "csv_logs",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "lightning_logs" / "tiny_cnn1" / "version_0"
    assert (run / "metrics.json").is_file() and list(run.glob("events.out.tfevents.*"))
    assert "val_loss" in next((tmp_path / "csv_logs").rglob("metrics.csv")).read_text()


def test_cli_with_mlflow_file_store(tiny_dataset, tmp_path):
    pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    result = run_cli(
        "fit",
        "--data.root",
        str(tiny_dataset),
        *TINY_FIT_ARGS,
        "--trainer.logger",
        "MLFlowLogger",
        "--trainer.logger.experiment_name",
        "tiny",
        "--trainer.logger.tracking_uri",
        f"file:{store}",
        cwd=tmp_path,
        env={"MLFLOW_ALLOW_FILE_STORE": "true"},
    )  # MLflow 3 asks file stores to opt in
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "lightning_logs" / "tiny_cnn1" / "version_0" / "metrics.json").is_file()
    assert list(store.rglob("metrics/val_loss")), "MLflow recorded the validation loss"


def test_ctrl_c_during_fit_raises_keyboard_interrupt_not_system_exit(tiny_dataset, tmp_path):
    """Lightning ends an interrupted ``Trainer.fit`` with ``sys.exit(1)``, which would close a notebook's kernel."""
    import tlbench

    with pytest.raises(KeyboardInterrupt):
        tlbench.fit(
            tiny_dataset,
            backbone="cnn1",
            output=tmp_path,
            trainer={**QUIET, "callbacks": [InterruptAtSetup()]},
            **TINY,
        )
