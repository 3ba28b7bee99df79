"""Commands other than fit/validate/test/predict: one typed function each, called by the CLI and by tests.

``run_command`` turns what a person types into the function's typed arguments through jsonargparse, with
four conveniences: LightningCLI-style dotted flags (``--data.root``), a trailing list of words for a list
parameter (``classify RUN a.jpg b.png dir/``), the first parameter as an optional positional word when every
parameter has a default (``report [RUNS_DIR]``), and fit overrides after ``--`` (``grid ... -- --data.batch_size 16``).
Help shows a dataset folder as ``--data.root`` whatever the function calls it; renamed flags keep parsing.
"""

from __future__ import annotations

import inspect
import json
import sys
import typing
from collections.abc import Callable

from jsonargparse import ArgumentParser

from tlbench.errors import TLBenchError, one_line

PASSTHROUGH_PARAMETER = "fit_args"
# jsonargparse keeps ``--config`` for a YAML of the command's own parameters (and drops a parameter of that name),
# so a command that reads a *fit* config (``check --config birds_efficientnet_lite0.yaml``) names it ``fit_config``.
FIT_CONFIG_PARAMETER = "fit_config"
# Old flag -> the parameter now holding it, still accepted but no longer in --help: ``data download --root``
# became ``--data_dir``, the name of a folder *of* datasets as in ``grid``, since ``--data.root`` is one dataset.
RENAMED_FLAGS = {"root": "data_dir"}
# Parameters holding one dataset folder (``check --data_root``, ``data info ROOT``): help and usage name them
# ``--data.root``, as fit does; the function's own spelling still parses, undocumented.
DATA_ROOT_FLAG = "--data.root"
DATASET_FOLDER_PARAMETERS = ("data_root", "root")
MISSING = "the following arguments are required: "  # jsonargparse's words for missing required arguments


def show_progress(progress: bool | None) -> bool:
    """A command's ``--progress``: bars on stderr when asked, by default only when stderr is a terminal, so logs
    and captured output stay clean."""
    return sys.stderr.isatty() if progress is None else progress


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


def _renamed(function: Callable, args: list[str]) -> list[str]:
    """An old spelling in ``RENAMED_FLAGS`` as the flag of the parameter that replaced it."""
    parameters = inspect.signature(function).parameters
    result = []
    for arg in args:
        flag, equals, value = arg.partition("=")
        new = RENAMED_FLAGS.get(flag[2:]) if arg.startswith("--") and flag[2:] not in parameters else None
        result.append(f"--{new}{equals}{value}" if new in parameters else arg)
    return result


def _fit_config_flag(function: Callable, args: list[str]) -> list[str]:
    """``--config X`` as ``--fit_config X`` for a command with a ``fit_config`` parameter (``FIT_CONFIG_PARAMETER``)."""
    if FIT_CONFIG_PARAMETER not in inspect.signature(function).parameters:
        return args
    return [
        f"--{FIT_CONFIG_PARAMETER}{arg[len('--config') :]}" if arg.partition("=")[0] == "--config" else arg
        for arg in args
    ]


def _named_positionals(function: Callable, args: list[str]) -> list[str]:
    """A required (so positional) parameter given as a flag, ``data info --data.root DIR`` (``--root DIR`` after
    ``_undot``), as the positional word it is: every command then takes the data folder as ``--data.root`` like
    ``fit``, besides the shorter ``data info DIR``."""
    required = [name for name, p in inspect.signature(function).parameters.items() if p.default is p.empty]
    named, rest, i = {}, [], 0
    while i < len(args):
        flag, equals, value = args[i].partition("=")
        if flag[2:] in required and flag.startswith("--") and (equals or i + 1 < len(args)):
            named[flag[2:]] = value if equals else args[i + 1]
            i += 1 if equals else 2
            continue
        rest.append(args[i])
        i += 1
    if not named or {"-h", "--help"} & set(args):
        return args
    words = iter([rest[index] for index in _positional_indices(rest)])
    ordered = [named[name] if name in named else next(words, None) for name in required]
    flags = [arg for index, arg in enumerate(rest) if index not in _positional_indices(rest)]
    return [*flags, *[word for word in ordered if word is not None], *words]


def _positional_indices(args: list[str]) -> list[int]:
    """Indices of the positional words of ``args``; every ``--flag`` takes a value (``--flag V``, ``--flag=V``)."""
    positional, i = [], 0
    while i < len(args):
        if args[i].startswith("--"):
            i += 1 if "=" in args[i] else 2
            continue
        positional.append(i)
        i += 1
    return positional


def _optional_first_positional(function: Callable, args: list[str]) -> list[str]:
    """``report runs/`` as ``report --runs_dir runs/`` when every parameter has a default.

    jsonargparse makes only required parameters positional, but a command whose input has a sensible default
    (``report`` reads ``lightning_logs``) should still take it as a plain word, as it did when it was required.
    """
    parameters = list(inspect.signature(function).parameters.values())
    if not parameters or any(p.default is p.empty for p in parameters) or {"-h", "--help"} & set(args):
        return args
    positional = _positional_indices(args)
    if not positional:
        return args
    first = positional[0]
    return [*args[:first], f"--{parameters[0].name}", *args[first:]]


def _gather_list_positional(function: Callable, args: list[str]) -> list[str]:
    """Positional words beyond the other required parameters, as one list for a trailing ``list[...]`` parameter.

    jsonargparse takes a positional list only as one JSON value; people type ``classify RUN a.jpg b.png dir/``.
    Every ``--flag`` here takes a value (``--flag VALUE`` or ``--flag=VALUE``).
    """
    hints = typing.get_type_hints(function)
    required = [name for name, p in inspect.signature(function).parameters.items() if p.default is p.empty]
    if not required or typing.get_origin(hints.get(required[-1])) is not list or {"-h", "--help"} & set(args):
        return args
    items = _positional_indices(args)[len(required) - 1 :]
    if not items:
        return args
    return [arg for i, arg in enumerate(args) if i not in items] + [json.dumps([args[i] for i in items])]


def _pass_through(function: Callable, rest: list[str], prog: str) -> list[str]:
    """``A -- B`` -> ``A --fit_args <B as a JSON list>``, so B's values stay strings (``"2"`` not ``2``)."""
    if "--" not in rest:
        return rest
    if PASSTHROUGH_PARAMETER not in inspect.signature(function).parameters:
        raise TLBenchError(f"{prog} takes no arguments after '--'; remove '--' and what follows it")
    split = rest.index("--")
    return [*rest[:split], f"--{PASSTHROUGH_PARAMETER}", json.dumps(rest[split + 1 :])]


class _Parser(ArgumentParser):
    """jsonargparse's parser, whose help and usage show a dataset folder as ``--data.root`` in every command.

    Only what is shown changes: parsing ``--data.root`` is ``_undot``'s and ``_named_positionals``' job, so the
    short ``data info DIR`` and the function's own ``--data_root`` keep working.
    """

    def _show_data_root(self) -> None:
        for action in self._actions:
            if action.dest not in DATASET_FOLDER_PARAMETERS:
                continue
            if action.option_strings:
                action.option_strings = [DATA_ROOT_FLAG]
            elif action in self._positionals._group_actions:
                action.metavar = f"{DATA_ROOT_FLAG} {action.dest.upper()}"
                self._positionals._group_actions.remove(action)
                self._optionals._group_actions.append(action)

    def error(self, message: str, *args, **kwargs):
        """jsonargparse names a missing argument by its key; a dataset folder is the ``--data.root`` the user types."""
        if message.startswith(MISSING):
            names = message.removeprefix(MISSING).split(", ")
            message = MISSING + ", ".join(
                DATA_ROOT_FLAG if name in DATASET_FOLDER_PARAMETERS else name for name in names
            )
        return super().error(message, *args, **kwargs)

    def format_usage(self) -> str:
        self._show_data_root()
        return super().format_usage()

    def format_help(self, *args, **kwargs) -> str:
        self._show_data_root()
        return super().format_help(*args, **kwargs)


def run_command(function: Callable, args: list[str], prog: str = "tlbench") -> int:
    """Parse ``args`` for ``function``, call it, and return its exit status (0 unless it returns an int); ``prog``
    names the command in its usage line (``tlbench grid status``, not ``__main__.py``).

    A wrong flag or value is one error line like any other bad input, not argparse's usage block.
    """
    from argparse import ArgumentError

    from jsonargparse import auto_cli

    args = _renamed(function, _undot(function, _pass_through(function, args, prog)))
    args = _fit_config_flag(function, _named_positionals(function, args))
    args = _optional_first_positional(function, _gather_list_positional(function, args))
    try:
        result = auto_cli(function, args=args, as_positional=True, exit_on_error=False, prog=prog, parser_class=_Parser)
    except ArgumentError as error:
        raise TLBenchError(f"{one_line(str(error))}; run '{prog} --help' for the options") from None
    return result if isinstance(result, int) else 0
