"""``python -m tlbench``: Lightning subcommands go to LightningCLI, every other command to a typed function.

Commands are registered by import path so that ``python -m tlbench fit`` never imports the web server and
``python -m tlbench data info`` never imports Lightning.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
import typing
from collections.abc import Callable, Sequence

from tlbench.errors import TLBenchError

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")

# command -> "module:function"; a nested dict is a command group (``tlbench data audit``).
COMMANDS: dict[str, str | dict[str, str]] = {
    "check": "tlbench.commands.check:check",
    "classify": "tlbench.commands.classify:classify",
    "data": {
        "split": "tlbench.commands.data:split",
        "info": "tlbench.commands.data:info",
        "download": "tlbench.commands.download:download",
        "audit": "tlbench.commands.audit:audit",
    },
}


def _usage() -> str:
    lines = ["usage: python -m tlbench COMMAND [ARGS]", "", "Lightning commands (LightningCLI, --help for options):"]
    lines += [f"  {name}" for name in LIGHTNING_SUBCOMMANDS]
    lines += ["", "Other commands:"]
    for name, target in COMMANDS.items():
        if isinstance(target, dict):
            lines += [f"  {name} {sub}" for sub in target]
        else:
            lines.append(f"  {name}")
    return "\n".join(lines)


def _resolve(argv: Sequence[str]) -> tuple[Callable, list[str]] | None:
    target = COMMANDS.get(argv[0])
    rest = list(argv[1:])
    if isinstance(target, dict):
        if not rest or rest[0] not in target:
            raise TLBenchError(f"'{argv[0]}' needs one of: {', '.join(target)} (e.g. python -m tlbench {argv[0]} {next(iter(target))} --help)")
        target, rest = target[rest[0]], rest[1:]
    if target is None:
        return None
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name), rest


def _undot(function: Callable, args: list[str]) -> list[str]:
    """LightningCLI-style ``--group.name`` as the function's ``group_name`` or ``name`` parameter.

    So ``check --data.root DIR --model.backbone X`` is typed exactly like ``fit``; a dotted flag matching
    neither is left for jsonargparse to reject with its usual message.
    """
    parameters = inspect.signature(function).parameters
    result = []
    for arg in args:
        flag, equals, value = arg.partition("=")
        group, dot, name = flag[2:].partition(".")
        if arg.startswith("--") and dot:
            match = next((c for c in (f"{group}_{name}", name) if c in parameters), None)
            arg = f"--{match}{equals}{value}" if match else arg
        result.append(arg)
    return result


def _gather_list_positional(function: Callable, args: list[str]) -> list[str]:
    """Positional words beyond the other required parameters, as one list for a trailing ``list[...]`` parameter.

    jsonargparse takes a positional list only as one JSON value; people type ``classify RUN a.jpg b.png dir/``.
    Every ``--flag`` here takes a value (``--flag VALUE`` or ``--flag=VALUE``).
    """
    hints = typing.get_type_hints(function)
    required = [name for name, p in inspect.signature(function).parameters.items() if p.default is p.empty]
    if not required or typing.get_origin(hints.get(required[-1])) is not list or {"-h", "--help"} & set(args):
        return args
    positional, i = [], 0
    while i < len(args):
        if args[i].startswith("--"):
            i += 1 if "=" in args[i] else 2
            continue
        positional.append(i)
        i += 1
    items = positional[len(required) - 1 :]
    if not items:
        return args
    return [arg for i, arg in enumerate(args) if i not in items] + [json.dumps([args[i] for i in items])]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    try:
        if argv[0] in LIGHTNING_SUBCOMMANDS:
            from tlbench.cli import run_lightning_cli

            run_lightning_cli(argv)
            return 0
        resolved = _resolve(argv)
        if resolved is None:
            raise TLBenchError(f"unknown command '{argv[0]}'; run 'python -m tlbench --help' for the list")
        function, rest = resolved
        from jsonargparse import auto_cli

        result = auto_cli(function, args=_gather_list_positional(function, _undot(function, rest)), as_positional=True)
        return result if isinstance(result, int) else 0
    except TLBenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
