"""``tlbench lr_find``: suggested learning rates for a fit's two phases (``tlbench/tuning.py``).

It takes exactly fit's options (``--config``, ``--data.*``, ``--model.*``, ``--trainer.*``), parsed by the same
``TLBenchCLI`` without running a subcommand: LightningCLI's subcommands are ``Trainer`` methods, and a range test
is not one, so adding it there would need a ``Trainer`` subclass for one command.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tlbench.commands.fit import TLBenchCLI
from tlbench.configs import resolve_config_args
from tlbench.outputs import default_output
from tlbench.tuning import find_learning_rates


def lr_find(args: list[str]) -> int:
    """Print the suggested ``head_lr`` and ``finetune_lr`` beside the configured ones and plot each range test
    to ``lightning_logs/lr_find/<experiment>/``."""
    cli = TLBenchCLI(args=resolve_config_args(args), run=False, prog="tlbench lr_find")
    plot_dir = Path(cli.trainer.default_root_dir) / default_output("lr_find", cli.experiment_name())
    # The searches are fits: their run folders, checkpoints and Lightning's own scratch checkpoint go to a folder
    # thrown away afterwards, so lr_find never leaves a half run among the real ones.
    with tempfile.TemporaryDirectory(prefix="tlbench-lr-find-") as scratch:
        suggestions = find_learning_rates(
            cli.model, cli.datamodule, lambda: cli.instantiate_trainer(default_root_dir=scratch), plot_dir
        )
    for name, suggested in suggestions.items():
        found = f"{suggested:.3g}" if suggested is not None else "none (the loss never fell steadily: see the plot)"
        print(f"{name}: suggested {found} (configured {cli.model.hparams[name]:g}); plot {plot_dir / name}.png")
    return 0
