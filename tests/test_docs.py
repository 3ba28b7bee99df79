"""The docs site: it builds with ``mkdocs build --strict``, its metrics.json schema is the one a real run writes, and
the quickstart's Python runs as written."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, make_dataset

DOCS = REPO / "docs"


def test_mkdocs_build_strict(tmp_path):
    """Broken links, anchors, nav entries or docstrings the API page cannot render fail the build."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    api = (tmp_path / "api" / "index.html").read_text()
    assert "tlbench.api.fit" in api and "tlbench.api.load" in api


def documented_keys(table: str) -> dict[str, str]:
    """``{key: present}`` of the table after ``<!-- metrics-schema: TABLE -->`` in docs/reference.md."""
    text = (DOCS / "reference.md").read_text()
    marker = f"<!-- metrics-schema: {table} -->"
    assert marker in text, f"docs/reference.md lost its {marker} table"
    table = itertools.takewhile(lambda line: line.startswith("|"), text.split(marker, 1)[1].lstrip("\n").splitlines())
    rows = [re.match(r"\| `([^`]+)` \| ([^|]+) \|", line) for line in list(table)[2:]]
    assert rows and all(rows), f"the table under {marker} has a row without a `key` | present | ... form"
    return {row[1]: row[2].strip() for row in rows}


def schema_gaps(documented: dict[str, str], actual: set[str]) -> tuple[set[str], set[str]]:
    """Keys the run wrote that the docs do not list, and keys the docs say are always there that the run lacks."""
    return actual - set(documented), {key for key, present in documented.items() if present == "always"} - actual


def test_metrics_json_schema_matches_a_real_run(tiny_run):
    """Both directions, top level and every phase: a key added to metrics.json without documenting it fails, and so
    does a documented "always" key that a real CLI fit (both phases, 3 classes) does not write."""
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    undocumented, missing = schema_gaps(documented_keys("top-level"), set(metrics))
    assert not undocumented and not missing, f"top level: undocumented {undocumented}, missing {missing}"
    phase_docs = documented_keys("phase")
    assert set(metrics["phases"]) == {"head", "finetune"}
    for phase, keys in metrics["phases"].items():
        actual = {re.sub(r"^test_top\d+_acc$", "test_topK_acc", key) for key in keys}
        undocumented, missing = schema_gaps(phase_docs, actual)
        assert not undocumented and not missing, f"phases.{phase}: undocumented {undocumented}, missing {missing}"


def test_schema_check_sees_a_difference():
    """The comparison itself can fail: an extra key and a missing "always" key are both reported."""
    assert schema_gaps({"a": "always", "b": "with x"}, {"b", "c"}) == ({"c"}, {"a"})


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), re.M | re.S)


def test_quickstart_python_blocks_run(tmp_path, monkeypatch, capsys):
    """Every ```python block of docs/quickstart.md, in order and in one namespace, as a reader runs them: in a folder
    holding ``data/birds`` (here 3 generated classes of 6 JPEGs instead of CUB's 10 species), nothing substituted."""
    blocks = python_blocks(DOCS / "quickstart.md")
    assert len(blocks) >= 3
    make_dataset(tmp_path / "data" / "birds", classes=3, per_class=6, size=64, suffix=".jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"docs/quickstart.md python block {number}", "exec"), namespace)
        except Exception as error:  # the block's number in the failure, not only a traceback into exec
            pytest.fail(f"quickstart python block {number} failed: {error!r}\n{block}")
    out = capsys.readouterr().out
    run_dir = tmp_path / "lightning_logs" / "birds_efficientnet_lite0" / "version_0"
    final = namespace["run"].metrics["final"]["phase"]
    assert str(run_dir) in out and (run_dir / f"export_{final}" / "model.json").is_file()
    assert "Prediction(" in out and "'class_0'" in out


def test_every_error_message_is_in_the_reference():
    """docs/reference.md's generated table against the ``TLBenchError`` messages in tlbench/ now, both ways: a
    message added or reworded in the code without ``python -m tests.error_messages`` fails, and so does a row
    whose message the code no longer has."""
    from tests.error_messages import REFERENCE, documented_table, package_messages, render_table, table_row

    documented = documented_table(REFERENCE.read_text())
    assert documented, "docs/reference.md lost its generated error-message table"
    messages = package_messages()
    missing = [f"{m.module} {m.function}: {m.text}" for m in messages if table_row(m) not in documented]
    rows = {table_row(m) for m in messages}
    stale = [line for line in documented.splitlines() if line.startswith("| `") and line not in rows]
    hint = "; run python -m tests.error_messages to regenerate the table"
    assert not missing, f"messages missing from docs/reference.md{hint}: {missing}"
    assert not stale, f"rows of docs/reference.md no message in the code has{hint}: {stale}"
    assert documented == render_table(messages)


def test_message_extraction_reads_every_form_a_message_takes():
    """Literals, f-strings, ``a if c else b``, ``+``, a same-module helper's returns, a text variable of the
    function (each of its values) or of the module, and a subclass's raise."""
    import ast

    from tests.error_messages import messages_in

    source = """
HINT = "pip install x"

class Special(TLBenchError):
    pass

def _why(name):
    if name:
        return f"no {name}; rename it"
    return "empty name; give one"

def check(path, n):
    fix = "remove it" if n else "add one"
    if n:
        raise TLBenchError(f"{path} has {len(n)} files" + "; remove them" if n > 1 else f"one file; {fix}")
    raise Special(_why(path.name))

def need():
    raise TLBenchError(f"x is missing; {HINT}")
"""
    found = messages_in({Path("tlbench/x.py"): ast.parse(source)})
    assert [(m.function, m.text) for m in found] == [
        ("check", "empty name; give one"),
        ("check", "no {name}; rename it"),
        ("check", "one file; add one"),
        ("check", "one file; remove it"),
        ("check", "{path} has {...} files; remove them"),
        ("need", "x is missing; pip install x"),
    ]


# Messages allowed to name no action, each with why no fix exists for the user to apply.
NO_FIX = {
    # The exported graph disagrees with the model it was made from: a fault of the exporter, not of the run or the
    # flags; the message's part is to say that nothing was written.
    "export parity check failed on {described}: max abs probability difference {detail} > {PARITY_TOLERANCE};"
    " nothing was written",
}


def test_every_error_message_names_a_fix():
    """Bad input gets one line naming the file and the fix: a message must tell the user what to do ("...; pass
    --data.root DIR"), not only what is wrong ("{runs_dir} is not a folder"). ``names_an_action`` looks for an
    action word opening a clause; ``NO_FIX`` holds the exceptions, which must stay real messages."""
    from tests.error_messages import names_an_action, package_messages

    texts = {m.text for m in package_messages()}
    silent = sorted(text for text in texts - NO_FIX if not names_an_action(text))
    assert silent == [], "messages that name no fix; add one (the flag, the command, the file to check)"
    assert sorted(NO_FIX - texts) == [], "allow-listed messages the code no longer has; drop them"
    assert [text for text in NO_FIX if names_an_action(text)] == [], "allow-listed messages with a fix"


def test_names_an_action_tells_a_fix_from_a_statement():
    from tests.error_messages import names_an_action

    assert names_an_action("{root} is not a folder; pass --data.root DIR")
    assert names_an_action("{url}: HTTP 404 (check the URL or --mirror)")
    assert names_an_action("ray needs ray: pip install 'tlbench[ray]'")
    assert not names_an_action("{runs_dir} is not a folder")
    assert not names_an_action("export parity check failed; nothing was written")  # a noun, not an imperative


def test_no_message_names_python_m_tlbench():
    """Hints name the console script, ``tlbench data audit DIR``, as the docs and usage lines do."""
    from tests.error_messages import package_messages

    assert [m.text for m in package_messages() if "python -m tlbench" in m.text] == []
