"""The package's layering: data loading knows nothing of models, so it can be used and tested alone."""

import ast
from pathlib import Path

from tests.conftest import REPO


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_data_never_imports_models():
    offenders = {}
    for path in (REPO / "tlbench" / "data").rglob("*.py"):
        layers_above = ("tlbench.models", "tlbench.callbacks")
        names = sorted(name for name in imported_modules(path) if name.startswith(layers_above))
        if names:
            offenders[str(path.relative_to(REPO))] = names
    assert not offenders


def test_the_check_sees_an_import_of_models(tmp_path):
    source = tmp_path / "example.py"
    source.write_text("def f():\n    from tlbench.models import module\n")
    assert "tlbench.models" in imported_modules(source)
