"""The one atomic writer: the mode ``open()`` would give, nothing left behind on failure."""

from __future__ import annotations

import os
import stat

import pandas as pd
import pytest

from tlbench.errors import TLBenchError
from tlbench.io import atomic_write, write_csv, write_json


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_open_would_give(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        written = [write_json(tmp_path / "m.json", {"a": 1}), write_csv(tmp_path / "t.csv", pd.DataFrame({"a": [1]}))]
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == mode
    assert [stat.S_IMODE(path.stat().st_mode) for path in written] == [mode, mode]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = write_json(tmp_path / "m.json", {"old": True})

    def broken(path):
        path.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(TLBenchError, match=r"could not write .*m\.json: No space left on device"):
        atomic_write(target, broken)
    assert target.read_text().strip().startswith('{\n  "old": true')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
