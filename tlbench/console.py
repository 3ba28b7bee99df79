"""What a command prints besides its results: dependencies' noise filtered precisely, tlbench's warnings in one line.

A default fit used to print 96 lines, 60 of them a dependency's deprecation warning repeated per loop, Lightning's
advertising tips, a warning about the modules tlbench freezes on purpose, and one two-line warning per duplicate
pair. Each filter below names the module and message it silences, so anything new from a dependency still shows.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


class TLBenchWarning(UserWarning):
    """Something about the user's data or setup that tlbench goes on with: printed as ``warning: ...``, one line,
    without the source line Python adds to every warning."""


# (message regex, category, regex of the module that warns): each a dependency's message, not tlbench's concern.
DEPENDENCY_WARNINGS = [
    # torch 2.14 deprecated LeafSpec; Lightning's _pytree still checks for it on every batch transfer.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"pytorch_lightning\.utilities\._pytree"),
    # The frozen backbone is in eval mode on purpose (BatchNorm statistics stay ImageNet's); the head trains.
    (r"Found \d+ module\(s\) in eval mode at the start of training", Warning, r"pytorch_lightning\.loops\.fit_loop"),
    # The fine-tuning budget rule sets max_epochs once the data is counted (PhaseSchedule), after Lightning looks.
    (r"`max_epochs` was not set\. Setting it to 1000 epochs", Warning, r"pytorch_lightning\.loops\.utilities"),
]
# Lightning INFO lines (logger pytorch_lightning.utilities.rank_zero) that say nothing about the run.
LIGHTNING_INFO_LOGGER = "pytorch_lightning.utilities.rank_zero"
LIGHTNING_INFO_NOISE = re.compile(
    r"💡 Tip: "  # advertising for Lightning's cloud products
    # tlbench's module brings its own checkpointing and phase callbacks on purpose
    r"|The following callbacks returned in `LightningModule.configure_callbacks` will override"
)


def warn(message: str) -> None:
    """A tlbench warning, on rank zero only (a DDP run prints it once). A process that has not imported Lightning
    (classify, serve, export: inference never does) is no Lightning DDP rank, and warns without importing it."""
    if "pytorch_lightning" not in sys.modules:
        warnings.warn(message, TLBenchWarning, stacklevel=2)
        return
    from pytorch_lightning.utilities import rank_zero_warn

    rank_zero_warn(message, category=TLBenchWarning)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not LIGHTNING_INFO_NOISE.match(record.getMessage())


_original_formatwarning = warnings.formatwarning


def _formatwarning(message, category, filename, lineno, line=None) -> str:
    if issubclass(category, TLBenchWarning):
        return f"warning: {message}\n"
    return _original_formatwarning(message, category, filename, lineno, line)


def quiet_console() -> None:
    """Install the filters above; a command's entry point calls it once (calling it again changes nothing)."""
    _ignore_dependency_warnings()
    logger = logging.getLogger(LIGHTNING_INFO_LOGGER)
    if not any(isinstance(existing, _DropNoise) for existing in logger.filters):
        logger.addFilter(_DropNoise())
    warnings.formatwarning = _formatwarning


@contextmanager
def quiet() -> Iterator[None]:
    """The same filters for the duration of one library call (``tlbench.fit`` from Python): the caller's process
    gets its own warning filters, warning format and Lightning logging back afterwards."""
    logger = logging.getLogger(LIGHTNING_INFO_LOGGER)
    noise, saved_format = _DropNoise(), warnings.formatwarning
    with warnings.catch_warnings():
        _ignore_dependency_warnings()
        logger.addFilter(noise)
        warnings.formatwarning = _formatwarning
        try:
            yield
        finally:
            logger.removeFilter(noise)
            warnings.formatwarning = saved_format


def _ignore_dependency_warnings() -> None:
    for message, category, module in DEPENDENCY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
