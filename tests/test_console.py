"""What a default fit prints: a person reads it whole, so every line must be about the run.

The process boundary is the point (warnings filters, logging handlers and the console script's own output), so
the fit runs as a user types it. Before: 46 lines outside progress bars on birds10, 60 % of them a dependency's
deprecation warning, Lightning's tips, a warning about the backbone tlbench freezes on purpose and the model table.
"""

from __future__ import annotations

import logging
import re
import shutil
import warnings

import pytest

from tests.conftest import make_dataset, run_cli
from tlbench.console import TLBenchWarning, quiet, quiet_console

PROGRESS = re.compile(r"━|\d+/\d+ \[|it/s\]|s/it\]")  # Rich's and tqdm's bars, whatever the terminal


@pytest.fixture(scope="module")
def default_fit(tmp_path_factory) -> list[str]:
    """A default fit (the pretrained EfficientNet-Lite0, both phases) on a folder holding exact duplicates, some
    within one split, some across splits, at 64 px and one epoch per phase so it takes seconds."""
    root = tmp_path_factory.mktemp("console")
    data = make_dataset(root / "dups", classes=3, per_class=12, size=64)
    for label in range(3):
        for index in range(4):
            shutil.copy(data / f"class_{label}" / f"img_{index:03d}.png", data / f"class_{label}" / f"copy_{index}.png")
    result = run_cli(
        "fit",
        *("--data.root", "dups", "--data.dedupe", "true", "--model.backbone", "efficientnet_lite0"),
        *("--model.input_size", "64", "--model.head_epochs", "1", "--model.finetune_epochs", "1"),
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = re.split(r"[\r\n]+", result.stdout + result.stderr)
    return [line for line in lines if line.strip() and not PROGRESS.search(line)]


def test_a_default_fit_prints_no_dependency_warning_or_tip(default_fit):
    noise = [line for line in default_fit if "site-packages" in line or "Warning" in line or "Tip:" in line]
    assert not noise, "\n".join(noise)


def test_a_default_fit_prints_at_most_25_lines_outside_progress_bars(default_fit):
    assert len(default_fit) <= 25, "\n".join(default_fit)
    assert any(line.startswith("phase ") for line in default_fit)  # the summary table is there


def test_duplicates_are_one_data_line_naming_the_reports(default_fit):
    (summary,) = [line for line in default_fit if "duplicate" in line]
    assert re.search(
        r"dups: 4\d images in 3 classes .*; 0 unusable file\(s\) skipped, \d+ duplicate\(s\) across", summary
    )
    assert "bad_files.csv and duplicates.csv" in summary


def test_a_tlbench_warning_is_one_line_without_its_source():
    quiet_console()
    assert warnings.formatwarning("12 of 40 images are small", TLBenchWarning, "datamodule.py", 9) == (
        "warning: 12 of 40 images are small\n"
    )
    other = warnings.formatwarning("deprecated", FutureWarning, "their.py", 9, line="call()")
    assert other.startswith("their.py:9: FutureWarning: deprecated")  # everyone else's keep Python's format


def test_dependency_filters_name_their_module_so_other_warnings_still_show():
    quiet_console()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_console()  # filters go first; "default" above would otherwise win
        leaf = "`isinstance(treespec, LeafSpec)` is deprecated"
        warnings.warn_explicit(leaf, FutureWarning, "_pytree.py", 21, module="pytorch_lightning.utilities._pytree")
        warnings.warn_explicit(leaf, FutureWarning, "mine.py", 1, module="my_package.tree")
        epochs = "`max_epochs` was not set. Setting it to 1000 epochs. To train without an epoch limit, set it to -1."
        warnings.warn_explicit(epochs, UserWarning, "utilities.py", 73, module="pytorch_lightning.loops.utilities")
        warnings.warn_explicit("data note", TLBenchWarning, "datamodule.py", 1, module="tlbench.data.datamodule")
    assert [(str(w.message), w.filename) for w in caught] == [(leaf, "mine.py"), ("data note", "datamodule.py")]


def test_quiet_filters_one_library_call_and_gives_the_caller_its_settings_back():
    leaf = "`isinstance(treespec, LeafSpec)` is deprecated"
    lightning_info = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    filters_before = list(lightning_info.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        format_before = warnings.formatwarning
        with quiet():
            warnings.warn_explicit(leaf, FutureWarning, "inside.py", 21, module="pytorch_lightning.utilities._pytree")
            one_line = warnings.formatwarning("12 of 40 images are small", TLBenchWarning, "datamodule.py", 9)
            tip = logging.makeLogRecord({"msg": "💡 Tip: try our cloud"})
            added = [noise.filter(tip) for noise in lightning_info.filters[len(filters_before) :]]
        warnings.warn_explicit(leaf, FutureWarning, "after.py", 21, module="pytorch_lightning.utilities._pytree")
        assert warnings.formatwarning is format_before
    assert [w.filename for w in caught] == ["after.py"]
    assert one_line == "warning: 12 of 40 images are small\n" and added == [False]
    assert lightning_info.filters == filters_before
