"""``benchmarks/common.record_results``: a benchmark's printed table kept in ``results/``, dated and machine-named."""

from __future__ import annotations

import datetime
import socket
import sys

import pytest

from benchmarks import common


def fake_benchmark(seen: list[list[str]]):
    def main() -> None:
        seen.append(list(sys.argv))
        common.print_table("speed", [("images/s", "42", "1.0x")])

    return main


def test_a_benchmark_s_table_is_kept_dated_and_machine_named(tmp_path, monkeypatch, capsys):
    seen: list[list[str]] = []
    monkeypatch.setattr(sys, "argv", ["benchmarks/demo.py", "--rounds", "2"])
    path = common.record_results(fake_benchmark(seen), folder=tmp_path)
    host = socket.gethostname()
    assert path == tmp_path / f"{datetime.date.today().isoformat()}_{host}_demo.md" and path.is_file()
    text = path.read_text()
    assert "- command: `python benchmarks/demo.py --rounds 2`" in text and f"- machine: {host}, " in text
    assert "  images/s     42     1.0x" in text  # the table as printed, which still reached the terminal
    assert "  images/s     42     1.0x" in capsys.readouterr().out
    assert seen == [["benchmarks/demo.py", "--rounds", "2"]]


def test_no_results_only_prints_and_main_never_sees_the_flag(tmp_path, monkeypatch, capsys):
    seen: list[list[str]] = []
    monkeypatch.setattr(sys, "argv", ["benchmarks/demo.py", "--no_results", "--rounds", "2"])
    assert common.record_results(fake_benchmark(seen), folder=tmp_path) is None
    assert seen == [["benchmarks/demo.py", "--rounds", "2"]] and list(tmp_path.iterdir()) == []
    assert "images/s" in capsys.readouterr().out


def test_a_failed_benchmark_writes_nothing(tmp_path, monkeypatch):
    def main() -> None:
        print("half a table")
        raise RuntimeError("fit failed")

    monkeypatch.setattr(sys, "argv", ["benchmarks/demo.py"])
    with pytest.raises(RuntimeError):
        common.record_results(main, folder=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_host_names_are_safe_file_names(monkeypatch, tmp_path):
    monkeypatch.setattr(socket, "gethostname", lambda: "gpu node/7")
    path = common.results_file("engine_speed", tmp_path, datetime.date(2026, 12, 7))
    assert path == tmp_path / "2026-12-07_gpu-node-7_engine_speed.md"
