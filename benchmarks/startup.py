"""Start-up of the commands a user waits on: each in a fresh process, as typed, median of ``--repeats`` runs.

    python benchmarks/startup.py RUN [--image photo.jpg] [--repeats 5] [--before OLD_CHECKOUT]

RUN is a run directory, checkpoint or bundle. Measured: ``tlbench --help``, ``classify --help``, ``fit -h``, one
image classified end to end (``tlbench classify RUN one.jpg``), the Python API (``import tlbench;
tlbench.load(RUN).predict(...)``), and the idle server (``tlbench serve RUN``: seconds until ``/health`` answers,
then its VmRSS). Each row is compared side by side with a reference, the two alternating run by run so that a
change in the machine's load hits both: ``--before`` another checkout of tlbench (an older commit), else this
checkout after a forced ``import pytorch_lightning`` (what every inference process paid while it built the
LightningModule). Wall seconds depend on what else the machine runs; CPU seconds (user + system) much less, and
on an idle machine a start-up's wall time is about its CPU time (importing runs on one core). The graph cache is
private to the benchmark and warmed by one unmeasured classify per checkout, as on a user's second run; the row
"the first time" classifies with an empty cache of its own each time (the checkpoint's graph exported and checked).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
LIGHTNING_FIRST = "import pytorch_lightning; "


def photo(path: Path) -> Path:
    """A 640x480 JPEG of smooth noise: a phone-photo-sized input without needing a file."""
    pixels = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(pixels).resize((640, 480), Image.BILINEAR).save(path, quality=90)
    return path


def tlbench_code(argv: list[str], preamble: str = "") -> list[str]:
    """``tlbench ARGV`` as the console script runs it, optionally after ``preamble`` (Python run first). ``-P``: the
    tlbench imported is the one on PYTHONPATH, never the current folder's."""
    return python(f"{preamble}import sys; from tlbench.__main__ import main; sys.exit(main({argv!r}))")


def python(code: str) -> list[str]:
    return [sys.executable, "-P", "-c", code]


def timed(command: list[str], env: dict) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MiB) of ``command`` in a fresh process; its output is discarded."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            log.seek(0)
            raise RuntimeError(f"{command} failed: {log.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def served(model: str, preamble: str, env: dict) -> tuple[float, float, float]:
    """Seconds until ``tlbench serve MODEL`` (after ``preamble``) answers ``/health``, its CPU seconds by then, and
    its VmRSS (MiB) a second later, idle."""
    port = free_port()
    command = tlbench_code(["serve", model, "--port", str(port)], preamble)
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited {process.returncode}: {process.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        seconds = time.perf_counter() - start
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        time.sleep(1)
        status = Path(f"/proc/{process.pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024
        return seconds, cpu, rss
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run directory, checkpoint or bundle")
    parser.add_argument("--image", type=Path, help="image to classify (default: a generated 640x480 JPEG)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", type=Path, help="another tlbench checkout to compare with (default: +Lightning)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tlbench-startup-") as scratch:
        image = str(args.image or photo(Path(scratch) / "one.jpg"))

        def env(code: Path) -> dict:
            cache = Path(scratch) / f"cache-{code.name}"
            return {**os.environ, "PYTHONPATH": str(code.resolve()), "TLBENCH_CACHE_DIR": str(cache)}

        # (label, environment, preamble) of this checkout and of the reference.
        now = ("now", env(REPO), "")
        reference = ("before", env(args.before), "") if args.before else ("+Lightning", env(REPO), LIGHTNING_FIRST)
        classify = ["classify", args.run, image]
        api = f"import tlbench; tlbench.load({args.run!r}).predict([{image!r}])"
        rows = {
            "tlbench --help": lambda variant: timed(tlbench_code(["--help"], variant[2]), variant[1]),
            "tlbench classify --help": lambda variant: timed(
                tlbench_code(["classify", "--help"], variant[2]), variant[1]
            ),
            "tlbench fit -h": lambda variant: timed(tlbench_code(["fit", "-h"], variant[2]), variant[1]),
            "classify RUN one.jpg": lambda variant: timed(tlbench_code(classify, variant[2]), variant[1]),
            "  the first time (no cache)": lambda variant: timed(
                tlbench_code(classify, variant[2]),
                {**variant[1], "TLBENCH_CACHE_DIR": tempfile.mkdtemp(prefix="cold-", dir=scratch)},
            ),
            "tlbench.load(RUN).predict": lambda variant: timed(python(variant[2] + api), variant[1]),
            "serve RUN: /health answered": lambda variant: served(args.run, variant[2], variant[1]),
        }
        variants = (now, reference)
        for variant in variants:
            timed(tlbench_code(classify), variant[1])  # warms the private graph cache, as a user's first run does
        samples = {(name, label): [] for name in rows for label, _, _ in variants}
        for _ in range(args.repeats):
            for name, measure in rows.items():
                for variant in variants:
                    samples[name, variant[0]].append(measure(variant))
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the end")
    print(f"median of {args.repeats} fresh processes each; RSS: peak, for serve VmRSS once idle; ratio: wall, CPU\n")
    header = ("measurement", "variant", "wall s", "CPU s", "RSS MiB", "ratio")
    print(f"{header[0]:28} {header[1]:10} {header[2]:>7} {header[3]:>7} {header[4]:>8}  {header[5]}")
    for name in rows:
        medians = {}
        for label, _, _ in variants:
            runs = samples[name, label]
            medians[label] = [statistics.median(run[i] for run in runs) for i in range(3)]
        for label, (wall, cpu, rss) in medians.items():
            base = medians[now[0]]
            ratio = "" if label == now[0] else f"{wall / base[0]:.2f}x, {cpu / base[1]:.2f}x"
            print(
                f"{name if label == now[0] else '':28} {label:10} {wall:7.2f} {cpu:7.2f} {rss:8.0f}  {ratio}".rstrip()
            )


if __name__ == "__main__":
    from common import record_results  # here: tests import this module as benchmarks.<name>

    record_results(main)
