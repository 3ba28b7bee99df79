"""``python -m tlbench``: Lightning subcommands go to LightningCLI, every other command to a typed function.

Commands are registered by import path so that ``tlbench fit`` never imports the web server and
``tlbench data info`` never imports Lightning.
"""

from __future__ import annotations

import importlib
import io
import sys
from collections.abc import Callable, Sequence

from tlbench.console import quiet_console
from tlbench.errors import TLBenchError

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
# Commands that take fit's LightningCLI options (``--config``, ``--model.*``) and parse them themselves.
LIGHTNING_CLI_COMMANDS = {"lr_find": "tlbench.commands.lr_find:lr_find"}

# command -> "module:function"; a nested dict is a command group (``tlbench data audit``), whose "" entry, if
# any, runs when no subcommand is named (``tlbench grid --datasets ...`` beside ``tlbench grid status``).
COMMANDS: dict[str, str | dict[str, str]] = {
    "check": "tlbench.commands.check:check",
    "cache": {
        "info": "tlbench.commands.cache:info",
        "clear": "tlbench.commands.cache:clear",
    },
    "classify": "tlbench.commands.classify:classify",
    "data": {
        "split": "tlbench.commands.data:split",
        "info": "tlbench.commands.data:info",
        "download": "tlbench.commands.download:download",
        "audit": "tlbench.commands.audit:audit",
    },
    "explain": "tlbench.commands.explain:explain",
    "export": "tlbench.commands.export:export",
    "serve": "tlbench.commands.serve:serve",
    "grid": {"": "tlbench.commands.grid:grid", "status": "tlbench.commands.grid:status"},
    "report": "tlbench.commands.report:report",
}
# Arguments after a bare ``--`` are handed, untouched, to a command's ``fit_args`` parameter (``tlbench grid
# ... -- --model.head_epochs 2``): jsonargparse has no pass-through of its own.


def _usage() -> str:
    lines = [
        "usage: tlbench COMMAND [ARGS]   (or python -m tlbench)",
        "",
        "Lightning commands (LightningCLI, --help for options):",
    ]
    lines += [f"  {name}" for name in (*LIGHTNING_SUBCOMMANDS, *LIGHTNING_CLI_COMMANDS)]
    lines += ["", "Other commands:"]
    for name, target in COMMANDS.items():
        if isinstance(target, dict):
            lines += [f"  {name} {sub}".rstrip() for sub in target]
        else:
            lines.append(f"  {name}")
    lines += [
        "",
        "Label new images: tlbench classify RUN IMAGE_OR_DIR...  (predict is Lightning's route: config + ckpt)",
    ]
    return "\n".join(lines)


def _resolve(argv: Sequence[str]) -> tuple[Callable, list[str], str] | None:
    """The command's function, its arguments, and the words that name it (``grid status``) for its usage line."""
    target = COMMANDS.get(argv[0])
    rest, words = list(argv[1:]), [argv[0]]
    if isinstance(target, dict):
        if (not rest or rest[0] not in target) and "" in target:
            rest = ["", *rest]
        if not rest or rest[0] not in target:
            example = f"tlbench {argv[0]} {next(iter(target))} --help"
            raise TLBenchError(f"'{argv[0]}' needs one of: {', '.join(target)}; run e.g. '{example}'")
        words += [rest[0]] if rest[0] else []
        target, rest = target[rest[0]], rest[1:]
    if target is None:
        return None
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name), rest, " ".join(["tlbench", *words])


def _print_any_file_name() -> None:
    """Escape what stdout cannot encode, as Python does on stderr: a file name that is not UTF-8 (its bytes held as
    surrogate escapes) prints as ``img_\\udcff.png`` in a listing instead of ending the command with a traceback."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _print_any_file_name()
    quiet_console()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from tlbench import __version__

        print(f"tlbench {__version__}")
        return 0
    try:
        if argv[0] in LIGHTNING_SUBCOMMANDS:
            from tlbench.commands.fit import run_lightning_cli

            run_lightning_cli(argv)
            return 0
        if argv[0] in LIGHTNING_CLI_COMMANDS:
            module_name, function_name = LIGHTNING_CLI_COMMANDS[argv[0]].split(":")
            return getattr(importlib.import_module(module_name), function_name)(argv[1:])
        resolved = _resolve(argv)
        if resolved is None:
            raise TLBenchError(f"unknown command '{argv[0]}'; run 'tlbench --help' for the list")
        function, rest, prog = resolved
        from tlbench.commands import run_command

        return run_command(function, rest, prog)
    except TLBenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
