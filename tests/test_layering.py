"""Import direction: gateway -> router_core <- descriptors; nothing heavy at import time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


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
