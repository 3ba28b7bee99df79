"""Every command x every bad input, through ``python -m tlbench`` as typed: one line, the right exit status, no
traceback, no partial output.

The contract (docs/reference.md "Errors"): a problem with the input prints one ``error: ...`` line on stderr naming the
offending path or setting and the fix, and exits 2; a command that ran and found problems (``data audit``
findings, ``classify`` rows it could not read, a ``grid`` with failed cells) exits 1. Either way nothing is left
behind that a later command would take for a result: no metrics.json, no checkpoint, no empty or temporary file,
only the reports a case names (``allowed``).

Lightning's own commands (fit, test, predict) may log Lightning's info lines (``Seed set to 0``) before the error;
for them the error is the last line and the only ``error:`` line (a bad data root or predict folder is refused
before the Trainer exists, so only the seed line precedes it). Every other command prints the error line alone.

Each case gets its own folder (inputs under ``in/``, the command's working directory ``cwd/``). The cases run in
one module fixture. The unreadable-file cases (which need a process without root's file-mode override) run as
``python -m tlbench`` processes, a few at a time; every other case runs ``tests.conftest.run_cli`` (the command in
this process, its stdout, stderr, Lightning's log lines and warnings captured as a process prints them, an escaping
exception recorded as the traceback a user would see): a process costs seconds of imports, the errors themselves
milliseconds.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest

from tests.conftest import TINY_FIT_ARGS, copy_run, make_dataset, make_image, run_cli, tlbench_env

LIGHTNING = ("fit", "test", "predict")
# Root reads a chmod 000 file through CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH; CI runs as root, so the commands
# start without those two capabilities (dropped from the bounding set before exec), like an ordinary user.
PR_CAPBSET_DROP = 24
DAC_CAPABILITIES = (1, 2)


# Run by a small Python before it execs the command (``without_file_permission_override``): even root then obeys
# file modes; a failing prctl ends it with status 1. Not a ``preexec_fn``: code between fork and exec in this
# many-threaded test process could wait forever on a lock another thread held at the fork.
DROP_AND_EXEC = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for capability in {DAC_CAPABILITIES}:
    if libc.prctl({PR_CAPBSET_DROP}, capability, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_CAPBSET_DROP): {{os.strerror(ctypes.get_errno())}}")
os.execv(sys.argv[1], sys.argv[1:])
"""


def without_file_permission_override(command: list[str]) -> list[str]:
    """``command`` started without root's override of file modes, where this process runs as root."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return command
    return [sys.executable, "-c", DROP_AND_EXEC, *command]


def _modes_bind_commands() -> bool:
    """Whether a command started through ``without_file_permission_override`` is refused a chmod 000 file."""
    with tempfile.NamedTemporaryFile() as secret:
        os.chmod(secret.name, 0)
        reader = subprocess.run(
            without_file_permission_override([sys.executable, "-c", f"open({secret.name!r}).close()"]),
            capture_output=True,
            text=True,
        )
        return reader.returncode != 0 and "PermissionError" in reader.stderr


MODES_BIND = not hasattr(os, "geteuid") or os.geteuid() != 0 or _modes_bind_commands()
PARALLEL = 4
_BACKBONE = TINY_FIT_ARGS.index("--model.backbone")
CELL_OVERRIDES = TINY_FIT_ARGS[:_BACKBONE] + TINY_FIT_ARGS[_BACKBONE + 2 :]


# --- inputs: each builder makes one bad input under ``base`` and returns the path the error must name ----------


def missing(base: Path) -> Path:
    return base / "no_such_folder"


def empty_folder(base: Path) -> Path:
    (base / "empty").mkdir()
    return base / "empty"


def a_file(base: Path) -> Path:
    return make_image(base / "photo.png", (200, 40, 40), seed=0)


def non_images(base: Path) -> Path:
    for label in ("cats", "dogs"):
        (base / "notes" / label).mkdir(parents=True)
        (base / "notes" / label / "readme.txt").write_text("not an image\n")
        (base / "notes" / label / "labels.csv").write_text("a,b\n")
    return base / "notes"


def _small_dataset(base: Path) -> Path:
    return make_dataset(base / "data", classes=2, per_class=4)


def text_as_jpg(base: Path) -> Path:
    """A dataset with one ``.jpg`` that is really text (the issue's ``data info`` traceback)."""
    bad = _small_dataset(base) / "class_0" / "fake.jpg"
    bad.write_text("this is not a JPEG\n")
    return bad


def truncated_image(base: Path) -> Path:
    """A dataset with one PNG cut in half: the header reads, the pixels do not."""
    path = make_image(_small_dataset(base) / "class_1" / "cut.png", (40, 200, 60), seed=99, size=64)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def unreadable_image(base: Path) -> Path:
    path = _small_dataset(base) / "class_0" / "img_000.png"
    path.chmod(0)
    return path


def unreadable_root(base: Path) -> Path:
    root = _small_dataset(base)
    root.chmod(0)
    return root


# --- damaged copies of a trained run ----------------------------------------------------------------------------


def best_checkpoints(run: Path) -> list[Path]:
    phases = json.loads((run / "metrics.json").read_text())["phases"]
    return [Path(phase["best_ckpt"]) for phase in phases.values()]


def no_metrics(run: Path) -> Path:
    (run / "metrics.json").unlink()
    return run


def damaged_metrics(run: Path) -> Path:
    path = run / "metrics.json"
    path.write_text(path.read_text()[:200])
    return path


def metrics_not_an_object(run: Path) -> Path:
    (run / "metrics.json").write_text("[1, 2, 3]\n")
    return run / "metrics.json"


def missing_checkpoint(run: Path) -> Path:
    for path in best_checkpoints(run):
        path.unlink()
    return best_checkpoints(run)[-1].parent


def truncated_checkpoint(run: Path) -> Path:
    for path in best_checkpoints(run):
        path.write_bytes(path.read_bytes()[:1000])
    return best_checkpoints(run)[-1].parent


def damaged_config(run: Path) -> Path:
    (run / "config.yaml").write_text("model:\n\tbackbone: cnn1\n")  # a tab: not YAML
    return run / "config.yaml"


# --- the matrix --------------------------------------------------------------------------------------------------

# A builder makes the case's bad input under ``base`` (the case's ``in/`` folder), given the trained run to copy,
# and returns the placeholders of the command's arguments; ``bad`` is the path the error line must name.
Build = Callable[[Path, Path], dict[str, Path]]


def on_data(make: Callable[[Path], Path]) -> Build:
    """A bad data root (``make`` returns it), or a dataset holding one bad file (``make`` returns the file)."""

    def build(base: Path, trained: Path) -> dict[str, Path]:
        bad = make(base)
        return {"bad": bad, "root": next((p for p in bad.parents if p.name == "data"), bad)}

    return build


def on_run(damage: Callable[[Path], Path]) -> Build:
    """A copy of the trained run damaged by ``damage`` (which returns what it damaged), and a good image."""

    def build(base: Path, trained: Path) -> dict[str, Path]:
        run = copy_run(trained, base)
        ckpt = best_checkpoints(run)[-1]
        return {"run": run, "runs": run.parents[1], "ckpt": ckpt, "image": a_file(base), "bad": damage(run)}

    return build


def instead_of_run(make: Callable[[Path], Path]) -> Build:
    """Something that is not a run directory (missing, empty, a file) where one is expected."""

    def build(base: Path, trained: Path) -> dict[str, Path]:
        bad = make(base)
        return {"run": bad, "runs": bad, "image": a_file(base / "images"), "bad": bad}

    return build


def with_file(name: str, text: str, bad: str | None = None) -> Build:
    """A file ``name`` holding ``text`` (a config, a grid file) and a small good dataset; ``bad`` overrides what
    the error must name (default the file)."""

    def build(base: Path, trained: Path) -> dict[str, Path]:
        path = base / name
        path.write_text(text)
        return {"file": path, "root": _small_dataset(base), "bad": Path(bad) if bad else path}

    return build


@dataclass(frozen=True)
class Case:
    """One command on one bad input: ``args`` hold ``{placeholders}`` filled by ``build``; the command must exit
    ``status`` and may leave only files matching ``allowed`` (globs relative to its working directory)."""

    id: str
    args: tuple[str, ...]
    build: Build
    status: int = 2
    allowed: tuple[str, ...] = ()
    unreadable: bool = False  # needs a process for which chmod 000 means unreadable (see MODES_BIND)


DATA_COMMANDS: dict[str, tuple[str, ...]] = {
    "data-info": ("data", "info", "{root}"),
    "data-split": ("data", "split", "{root}"),
    "data-audit": ("data", "audit", "{root}"),
    "fit": ("fit", "--data.root", "{root}", *TINY_FIT_ARGS),
    "check": ("check", "--data.root", "{root}", "--backbone", "cnn1"),
    "grid": ("grid", "--datasets", "{root}", "--backbones", "cnn1", "--output", "out", "--", *CELL_OVERRIDES),
}
DATA_INPUTS = {"missing": missing, "empty": empty_folder, "file": a_file, "non-images": non_images}
# A dataset with one bad file, for the commands that decode images: (exit status, reports it may leave). data
# split lists files without decoding, check reports an unreadable sample per row, and grid cells are fits.
BAD_FILES = {"text-as-jpg": text_as_jpg, "truncated": truncated_image, "unreadable-file": unreadable_image}
BAD_FILE_OUTCOMES: dict[str, tuple[int, tuple[str, ...]]] = {
    "data-info": (2, ()),
    "data-audit": (1, ("lightning_logs/audit/data/*.csv",)),
    # the run folder holding bad_files.csv, which the error line names; never a metrics.json or checkpoint
    "fit": (2, ("lightning_logs/data_cnn1/version_0/*",)),
}
RUN_COMMANDS: dict[str, tuple[str, ...]] = {
    "test": ("test", "--config", "{run}/config.yaml"),
    "export": ("export", "{run}"),
    "classify": ("classify", "{run}", "{image}"),
    "explain": ("explain", "{run}", "{image}"),
    "serve": ("serve", "{run}", "--port", "1"),
}
RUN_DAMAGE = {
    "no-metrics": no_metrics,
    "damaged-metrics": damaged_metrics,
    "metrics-not-object": metrics_not_an_object,
    "missing-ckpt": missing_checkpoint,
    "truncated-ckpt": truncated_checkpoint,
}
NOT_A_RUN = {"missing": missing, "empty": empty_folder, "file": a_file}
FIT_CONFIG_KEY = "model:\n  bakbone: cnn1\n"
GRID_KEY = "datasets: [data]\nbackbones: [cnn1]\nepochs: 3\n"


def cases() -> list[Case]:
    found = []
    for command, args in DATA_COMMANDS.items():
        found += [Case(f"{command}:{name}", args, on_data(make)) for name, make in DATA_INPUTS.items()]
        found.append(Case(f"{command}:unreadable-root", args, on_data(unreadable_root), unreadable=True))
    for command, (status, allowed) in BAD_FILE_OUTCOMES.items():
        for name, make in BAD_FILES.items():
            if command == "data-info" and name == "truncated":
                continue  # info reads headers only, and a truncated file's header is whole: the audit finds it
            unreadable = name == "unreadable-file"
            found.append(Case(f"{command}:{name}", DATA_COMMANDS[command], on_data(make), status, allowed, unreadable))
    for command, args in RUN_COMMANDS.items():
        found += [Case(f"{command}:{name}", args, instead_of_run(make)) for name, make in NOT_A_RUN.items()]
        found += [Case(f"{command}:{name}", args, on_run(damage)) for name, damage in RUN_DAMAGE.items()]
    predict = ("predict", "--config", "{run}/config.yaml", "--ckpt_path", "{ckpt}")
    found += [
        Case("predict:missing-ckpt", predict, on_run(missing_checkpoint)),
        Case("predict:truncated-ckpt", predict, on_run(truncated_checkpoint)),
        Case("predict:damaged-config", predict, on_run(damaged_config)),
        Case("test:damaged-config", RUN_COMMANDS["test"], on_run(damaged_config)),
        Case("classify:missing-image", ("classify", "{run}", "{bad}"), on_run(lambda run: run / "gone.jpg"), 1),
        Case("classify:empty-folder", ("classify", "{run}", "{bad}"), on_run(lambda run: empty_folder(run))),
        # explain refuses a missing or non-image file before it writes any overlay (classify reports it in a row)
        Case("explain:missing-image", ("explain", "{run}", "{bad}"), on_run(lambda run: run / "gone.jpg")),
        Case("explain:text-as-jpg", ("explain", "{run}", "{bad}"), on_run(lambda run: text_as_jpg(run.parent))),
    ]
    found += [Case(f"report:{name}", ("report", "{runs}"), instead_of_run(make)) for name, make in NOT_A_RUN.items()]
    found += [
        Case("report:damaged-metrics", ("report", "{runs}"), on_run(damaged_metrics)),
        Case(
            "report:output-is-file",
            ("report", "{runs}", "--output", "{image}"),
            on_run(lambda run: run.parents[2] / "photo.png"),
        ),
    ]
    download = ("data", "download")
    found += [
        Case("data-download:unknown", (*download, "nosuch", "--data_dir", "{root}"), with_file("x", "", "nosuch")),
        Case("data-download:root-is-file", (*download, "leaves", "--data_dir", "{file}"), with_file("root", "")),
        Case(
            "data-download:unreachable",
            (*download, "leaves", "--data_dir", "{root}", "--mirror", "http://127.0.0.1:9/m"),
            with_file("x", "", "127.0.0.1:9"),
            allowed=("in/data/.downloads",),
        ),
    ]
    found += [
        Case(
            "fit:unknown-flag",
            ("fit", "--data.root", "{root}", "--model.bakbone", "cnn1"),
            with_file("x", "", "bakbone"),
        ),
        Case(
            "fit:config-key",
            ("fit", "--config", "{file}", "--data.root", "{root}"),
            with_file("c.yaml", FIT_CONFIG_KEY, "bakbone"),
        ),
        Case("data-info:unknown-flag", ("data", "info", "{root}", "--bogus", "1"), with_file("x", "", "bogus")),
        Case(
            "grid:file-key",
            ("grid", "--grid", "{file}", "--data_dir", "{root}"),
            with_file("g.yaml", GRID_KEY, "epochs"),
        ),
        Case("export:format", ("export", "{run}", "--format", "pickle"), on_run(lambda run: Path("pickle"))),
    ]
    return found


CASES = cases()


def files_below(folder: Path) -> dict[str, int]:
    """Relative path -> size of every file below ``folder``."""
    return {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in folder.rglob("*")
        if path.is_file() and not path.is_symlink()
    }


@dataclass
class Outcome:
    case: Case
    placeholders: dict[str, Path]
    before: dict[str, int]
    after: dict[str, int]
    result: subprocess.CompletedProcess


def in_a_process(case: Case) -> bool:
    return case.unreadable


def _run(case: Case, folder: Path, trained: Path, env: dict) -> Outcome:
    """One case; ``env`` is the environment of a case run as a process."""
    inputs = folder / "in"
    inputs.mkdir(parents=True)
    placeholders = case.build(inputs, trained)
    args = [arg.format(**{k: str(v) for k, v in placeholders.items()}) for arg in case.args]
    before = files_below(folder)
    if not in_a_process(case):
        result = run_cli(*args, cwd=folder)
    else:
        result = subprocess.run(
            without_file_permission_override([sys.executable, "-m", "tlbench", *args]),
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )
    for path in folder.rglob("*"):  # let the fixture's cleanup remove what the case made unreadable
        path.chmod(path.stat().st_mode | stat.S_IRWXU)
    return Outcome(case, placeholders, before, files_below(folder), result)


@pytest.fixture(scope="module")
def outcomes(tiny_run, tmp_path_factory) -> dict[str, Outcome]:
    """Every runnable case: the processes a few at a time while this thread runs the in-process ones in turn."""
    base = tmp_path_factory.mktemp("matrix")
    runnable = [case for case in CASES if MODES_BIND or not case.unreadable]
    folder = {case.id: base / case.id.replace(":", "_") for case in runnable}
    # Taken before any in-process case runs: those change os.environ for a while (Lightning's PL_GLOBAL_SEED).
    env = tlbench_env({"OMP_NUM_THREADS": "1"})
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {
            case.id: pool.submit(_run, case, folder[case.id], tiny_run, env) for case in runnable if in_a_process(case)
        }
        done = {case.id: _run(case, folder[case.id], tiny_run, env) for case in runnable if not in_a_process(case)}
    return {**done, **{name: future.result() for name, future in futures.items()}}


def error_line(outcome: Outcome) -> str:
    """The one ``error:`` line of stderr, after checking the one-line convention."""
    result = outcome.result
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-3000:]
    if outcome.case.args[0] not in LIGHTNING:
        assert lines == errors, result.stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gives_one_line_and_leaves_nothing(case: Case, outcomes: dict[str, Outcome]) -> None:
    if case.id not in outcomes:
        pytest.skip("this machine lets root read a chmod 000 file and refuses to drop that capability")
    outcome = outcomes[case.id]
    result = outcome.result
    assert result.returncode == case.status, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    if case.status == 2:
        line = error_line(outcome)
        bad = outcome.placeholders["bad"]
        assert str(bad) in line or bad.name in line, line
    else:
        assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    new = {path: size for path, size in outcome.after.items() if path not in outcome.before}
    assert not [path for path in new if path.endswith(("metrics.json", ".ckpt", ".tmp"))], new
    unexpected = [path for path in new if not any(fnmatch(path, pattern) for pattern in case.allowed)]
    assert not unexpected, unexpected
    assert not [path for path, size in new.items() if size == 0], new
    changed = [path for path, size in outcome.before.items() if outcome.after.get(path) != size]
    assert not changed, changed


@pytest.mark.parametrize("name", list(DATA_INPUTS))
def test_fit_refuses_a_bad_data_root_before_lightning_reports_devices(name: str, outcomes: dict[str, Outcome]) -> None:
    """The data root is read before the Trainer exists: its error follows only Lightning's seed line, not the
    device report and tips (which do precede errors found while decoding, once the run folder exists)."""
    lines = [line for line in outcomes[f"fit:{name}"].result.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("Seed set to ") and lines[1].startswith("error: "), lines
