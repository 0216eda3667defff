"""Import direction: gateway -> router_core <- descriptors; nothing heavy at import time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


_IMPORTS = """
import ast, json, sys
from pathlib import Path
found = set()
for path in Path(sys.argv[1]).rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
print(json.dumps(sorted(found)))
"""


def _imports(package: str) -> set[str]:
    """Top-level modules ``package`` imports, parsed in a fresh interpreter: in this one, CPython
    3.11.7's compiler can be left unusable by an earlier RecursionError in another test
    ("AST constructor recursion depth mismatch", fixed in 3.11.8)."""
    out = subprocess.run([sys.executable, "-c", _IMPORTS, str(ROOT / package)], capture_output=True, text=True,
                         check=True)
    return set(json.loads(out.stdout))


def test_router_core_imports_neither_gateway_nor_descriptors() -> None:
    assert not {"gateway", "descriptors"} & _imports("router_core")


def test_descriptors_never_import_gateway() -> None:
    assert "gateway" not in _imports("descriptors")


def test_importing_the_app_loads_no_model_or_client() -> None:
    code = (
        "import sys, gateway.app, gateway.cli, router_core.types;"
        "heavy = [m for m in ('torch', 'litellm', 'sentence_transformers', 'faiss') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""
