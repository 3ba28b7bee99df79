"""``python -m tlbench fit/test`` end to end on tiny generated images, as a user types them."""

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import REPO, TINY_FIT_ARGS, run_cli, run_tlbench


def fit(data: Path, cwd: Path, *extra: str, run=run_cli):
    """A tiny fit, in this process unless ``run`` is ``run_tlbench`` (a test that kills the process)."""
    return run("fit", "--data.root", str(data), *TINY_FIT_ARGS, *extra, cwd=cwd)


def test_fit_writes_the_run_contract_and_prints_a_summary(tiny_dataset, tmp_path):
    result = fit(tiny_dataset, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "lightning_logs" / "tiny_cnn1" / "version_0"
    ckpts = tmp_path / "checkpoints" / "tiny_cnn1" / "version_0"
    for name in (
        "config.yaml",
        "split.csv",
        "history.csv",
        "metrics.json",
        "predictions_head.csv",
        "predictions_finetune.csv",
    ):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*"))
    assert (ckpts / "last.ckpt").is_file()
    assert len(list(ckpts.glob("head-best-*.ckpt"))) == 1 and len(list(ckpts.glob("finetune-best-*.ckpt"))) == 1

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"] == "tiny" and metrics["backbone"] == "cnn1" and metrics["weights"] == "random"
    assert metrics["classes"] == ["class_0", "class_1", "class_2"]
    assert metrics["split_sizes"] == {"train": 21, "val": 6, "test": 3}
    assert metrics["test_on"] == "test"
    for phase in ("head", "finetune"):
        values = metrics["phases"][phase]
        lo, hi = values["test_acc_ci95"]
        assert 0 <= lo <= values["test_acc"] <= hi <= 1
        assert values["epochs"] == 1 and values["train_seconds"] > 0 and Path(values["best_ckpt"]).is_file()

    predictions = pd.read_csv(run / "predictions_finetune.csv")
    split = pd.read_csv(run / "split.csv")
    assert sorted(predictions.path) == sorted(split[split.split == "test"].path)
    assert {"true_label", "pred_label", "top1_label", "top1_prob", "prob_class_0", "split"} <= set(predictions.columns)
    assert predictions.filter(like="prob_class").sum(axis=1).round(4).eq(1).all()
    assert "head" in result.stdout and "finetune" in result.stdout and "95% CI" in result.stdout

    tested = run_cli("test", "--config", str(run / "config.yaml"), "--ckpt_path", values["best_ckpt"], cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr[-3000:]
    retest = json.loads((tmp_path / "lightning_logs" / "tiny_cnn1" / "version_1" / "metrics.json").read_text())
    assert retest["phases"]["finetune"]["test_acc"] == metrics["phases"]["finetune"]["test_acc"]


def test_head_only_run_and_default_root_dir(tiny_dataset, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = fit(
        tiny_dataset,
        cwd,
        "--model.finetune_epochs",
        "0",
        "--trainer.default_root_dir",
        str(elsewhere),
        "--experiment",
        "probe",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(cwd.iterdir()) == []
    metrics = json.loads((elsewhere / "lightning_logs" / "probe" / "version_0" / "metrics.json").read_text())
    assert list(metrics["phases"]) == ["head"]


def test_same_seed_gives_identical_split_and_predictions(tiny_dataset, tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        assert fit(tiny_dataset, tmp_path / name).returncode == 0
    run_a, run_b = (tmp_path / n / "lightning_logs" / "tiny_cnn1" / "version_0" for n in "ab")
    assert (run_a / "split.csv").read_text() == (run_b / "split.csv").read_text()
    assert (run_a / "predictions_finetune.csv").read_text() == (run_b / "predictions_finetune.csv").read_text()


@pytest.mark.parametrize("kill_epoch, resumed_phase", [(2, "head"), (3, "finetune")])
def test_resume_after_kill_continues_in_the_right_phase(tiny_dataset, tmp_path, kill_epoch, resumed_phase):
    """Killed with SIGKILL at the phase boundary or inside fine-tuning, ``--ckpt_path last`` finishes the run
    fine-tuning the right parameters (Lightning #21901 re-freezes them)."""
    args = [
        "--model.head_epochs",
        "2",
        "--model.finetune_epochs",
        "2",
        "--model.unfreeze_blocks",
        "1",
        "--model.finetune_optimizer",
        "sgd",
    ]
    killed = fit(
        tiny_dataset,
        tmp_path,
        *args,
        "--trainer.callbacks+=tests.helpers.KillAtEpochStart",
        f"--trainer.callbacks.epoch={kill_epoch}",
        run=run_tlbench,
    )
    assert killed.returncode == -9
    last = tmp_path / "checkpoints" / "tiny_cnn1" / "version_0" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == kill_epoch - 1 and state["tlbench_phase"] == resumed_phase

    resumed = fit(tiny_dataset, tmp_path, *args, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = torch.load(last, map_location="cpu", weights_only=False)
    assert final["epoch"] == 3 and final["tlbench_phase"] == "finetune"
    head_params = 4  # two Linear layers
    optimizer_params = len(final["optimizer_states"][0]["state"])
    assert optimizer_params > head_params, "the fine-tune optimizer must train backbone blocks after resume"
    assert final["optimizer_states"][0]["param_groups"][0]["momentum"] == 0.9
    metrics = json.loads((tmp_path / "lightning_logs" / "tiny_cnn1" / "version_0" / "metrics.json").read_text())
    assert metrics["phases"]["head"]["epochs"] == 2 and metrics["phases"]["finetune"]["epochs"] == 2
    assert not (tmp_path / "lightning_logs" / "tiny_cnn1" / "version_1").exists()


def test_bare_config_names_resolve_in_configs(tmp_path):
    result = run_cli("fit", "--config", "dogs_vgg19.yaml", "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        "backbone: vgg19" in result.stdout
        and "root: data/dogs" in result.stdout
        and "finetune_optimizer: sgd" in result.stdout
    )
    assert "\noptimizer:" not in result.stdout, "a top-level optimizer would replace the per-phase optimizers"
    missing = run_cli("fit", "--config", "nope_nothing.yaml", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip().startswith("error: config 'nope_nothing.yaml' not found")


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*_*.yaml")))
def test_every_shipped_config_parses_with_its_dataset_and_backbone(config, monkeypatch):
    from tlbench.commands.fit import TLBenchCLI
    from tlbench.configs import resolve_config_args

    class ParseOnly(TLBenchCLI):
        def instantiate_classes(self) -> None:
            """Validate every key and type of the config without building models."""

    dataset, backbone = Path(config).stem.split("_", 1)
    monkeypatch.setattr("sys.argv", ["tlbench", *resolve_config_args(["--config", config])])
    cli = ParseOnly(run=False)
    assert cli.config.model.backbone == backbone and cli.config.data.root == f"data/{dataset}"
    model = cli.config.model
    if model.finetune_epochs is None:  # the budget rule fixes the fine-tune length once the split is known
        assert model.budget in ("fast", "default", "thorough") and cli.config.trainer.max_epochs is None
    else:
        assert cli.config.trainer.max_epochs == model.head_epochs + model.finetune_epochs


def test_user_errors_are_one_line_without_traceback(tiny_dataset, tmp_path):
    missing = fit(tmp_path / "no_such_folder", tmp_path)
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr and "is not a folder" in missing.stderr.strip().splitlines()[-1]
    (tiny_dataset / "class_1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tiny_dataset / "class_2" / "empty.png").write_bytes(b"")
    bad = fit(tiny_dataset, tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    line = bad.stderr.strip().splitlines()[-1]
    assert "broken.jpg" in line and "empty.png" in line


def test_hub_weights_without_network_give_one_clear_line(tiny_dataset, tmp_path):
    """A process: the Hugging Face hub reads ``HF_HUB_OFFLINE`` once, when it is first imported."""
    result = run_tlbench(
        "fit",
        "--data.root",
        str(tiny_dataset),
        *TINY_FIT_ARGS,
        "--model.backbone",
        "resnet18",
        "--model.pretrained",
        "true",
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--model.weights PATH" in result.stderr.strip().splitlines()[-1]


def test_console_script_and_help():
    script = shutil.which("tlbench")
    if script is None:
        pytest.skip("tlbench is not installed as a console script in this environment")
    from subprocess import run

    result = run([script, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "fit" in result.stdout and "data split" in result.stdout


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (REPO / "configs" / "recipes").glob("*.yaml")))
def test_every_candidate_recipe_parses_and_names_itself(recipe, monkeypatch):
    from tlbench.commands.fit import TLBenchCLI
    from tlbench.configs import recipe_file

    class ParseOnly(TLBenchCLI):
        def instantiate_classes(self) -> None:
            """Validate every key and type of the recipe without building models."""

    monkeypatch.setattr("sys.argv", ["tlbench", "--model", str(recipe_file(recipe)), "--data.root", "data/x"])
    cli = ParseOnly(run=False)
    assert cli.config.model.recipe == recipe
    model = cli.config.model
    if model.finetune_epochs is None:  # the budget rule fixes the fine-tune length once the split is known
        assert model.budget in ("fast", "default", "thorough") and cli.config.trainer.max_epochs is None
    else:
        assert cli.config.trainer.max_epochs == model.head_epochs + model.finetune_epochs


def test_module_defaults_are_the_default_recipe():
    """`fit` without --config and tlbench.fit() must train the recipe the grid chose, as the shipped config does."""
    import inspect

    import yaml

    from tlbench import api
    from tlbench.models.module import TransferLearningModule

    recipe = yaml.safe_load((REPO / "configs" / "models" / "efficientnet_lite2.yaml").read_text())
    defaults = {name: p.default for name, p in inspect.signature(TransferLearningModule).parameters.items()}
    assert {name: defaults[name] for name in recipe} == recipe
    assert inspect.signature(api.fit).parameters["backbone"].default == recipe["backbone"]


def every_command() -> list[list[str]]:
    from tlbench.__main__ import COMMANDS, LIGHTNING_CLI_COMMANDS, LIGHTNING_SUBCOMMANDS

    words = [[name] for name in (*LIGHTNING_SUBCOMMANDS, *LIGHTNING_CLI_COMMANDS)]
    for name, target in COMMANDS.items():
        words += [[name, *([sub] if sub else [])] for sub in target] if isinstance(target, dict) else [[name]]
    return words


@pytest.mark.parametrize("words", every_command(), ids=" ".join)
def test_every_usage_line_names_tlbench_and_the_command(words, capsys):
    """Usage lines said ``__main__.py`` (argparse names the program after ``sys.argv[0]``)."""
    from tlbench.__main__ import main

    with pytest.raises(SystemExit) as exit:
        main([*words, "--help"])
    usage = capsys.readouterr().out.splitlines()[0]
    assert exit.value.code == 0
    expected = "usage: tlbench [options] " if words[0] in ("fit", "validate", "test", "predict") else "usage: tlbench "
    assert usage.startswith(expected + " ".join(words) + " "), usage


def typed_commands() -> list[list[str]]:
    from tlbench.__main__ import COMMANDS

    return [words for words in every_command() if words[0] in COMMANDS]


@pytest.mark.parametrize("words", typed_commands(), ids=" ".join)
def test_every_help_names_a_dataset_folder_data_root(words, capsys):
    """``check --help`` showed ``--data_root`` and ``data info --help`` a positional ``root`` for what fit calls
    ``--data.root``; every command's help and usage now show fit's name, and only it."""
    import inspect

    from tlbench.__main__ import _resolve, main

    function = _resolve(words)[0]
    with pytest.raises(SystemExit):
        main([*words, "--help"])
    help_text = capsys.readouterr().out
    usage = help_text.split("\n\n")[0]
    takes_a_dataset = bool({"data_root", "root"} & set(inspect.signature(function).parameters))
    assert ("--data.root" in usage) == takes_a_dataset, usage
    assert not re.search(r"--data_root|--root\b|^ +root ", help_text, re.MULTILINE), help_text


@pytest.mark.parametrize("words", [*typed_commands(), ["predict"]], ids=" ".join)
def test_every_help_says_what_the_command_does_in_whole_sentences(words, capsys):
    """``classify --help`` and ``export --help`` ended mid-sentence (jsonargparse shows a docstring's first line);
    ``predict --help`` was Lightning's "Run inference on your data", not what predict is for in tlbench."""
    from tlbench.__main__ import main

    with pytest.raises(SystemExit):
        main([*words, "--help"])
    description = " ".join(capsys.readouterr().out.split("\n\n")[1].split())
    assert description.endswith(".") and not description.startswith(("usage:", "options:")), description
    if words == ["predict"]:
        assert "Lightning's predict" in description and "tlbench classify RUN" in description


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["check", "--data_root", "{missing}"], "is not a folder"),
        (["data", "download", "nosuch", "--root", "{missing}"], "unknown dataset 'nosuch'"),
    ],
    ids=["check --data_root", "data download --root"],
)
def test_old_spellings_still_parse(argv, expected, tmp_path, capsys):
    """Help shows one name per thing; scripts written with the old one keep working."""
    from tlbench.__main__ import main

    assert main([arg.format(missing=tmp_path / "missing") for arg in argv]) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize("words", [["data", "info"], ["data", "audit"], ["data", "split"]], ids=" ".join)
def test_a_missing_dataset_folder_is_named_data_root(words, capsys):
    """``data info`` with no folder said "required: root", jsonargparse's key, not the flag the user types."""
    from tlbench.__main__ import main

    assert main(words) == 2
    err = capsys.readouterr().err
    assert f"required: --data.root; run 'tlbench {' '.join(words)} --help' for the options" in err, err


def test_version(capsys):
    from tlbench import __version__
    from tlbench.__main__ import main

    assert main(["--version"]) == 0 and capsys.readouterr().out == f"tlbench {__version__}\n"


@pytest.mark.parametrize("command", [["data", "info"], ["data", "audit", "--output", "audit"]], ids=" ".join)
def test_a_dataset_folder_is_data_root_in_every_command(command, tiny_dataset, tmp_path, capsys, monkeypatch):
    """``fit --data.root DIR`` and ``data info DIR`` named one thing two ways; ``--data.root`` now works everywhere."""
    from tlbench.__main__ import main

    monkeypatch.chdir(tmp_path)
    outputs = []
    for where in ([str(tiny_dataset)], ["--data.root", str(tiny_dataset)], [f"--data.root={tiny_dataset}"]):
        assert main([*command, *where]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2] and "class_0" in outputs[0]


def test_fit_dash_h_is_short_and_names_real_options_with_their_defaults(capsys):
    from tlbench.__main__ import main

    assert main(["fit", "-h"]) == 0
    short = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    full = capsys.readouterr().out
    options = re.findall(r"^  (--[\w.]+)", short, re.MULTILINE)
    assert 12 <= len(options) <= 20 and len(short.splitlines()) <= 25 and len(full.splitlines()) > 300
    assert [option for option in options if option not in full] == []
    assert "--model.backbone NAME     timm name or embedded offline weights (default efficientnet_lite2)" in short
    assert "(default 10)" in short  # head_epochs, read from the module's signature


def test_ckpt_path_help_says_what_tlbench_does_with_last(capsys):
    from tlbench.__main__ import main

    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "or 'last': the newest run of this experiment, from its last.ckpt" in help_text
