"""Generated doc blocks match their result files (bench/render_docs.py): a hand edit of a number in a
block, or a new result file without a re-render, fails here."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _render_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_docs", ROOT / "bench" / "render_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def render_docs() -> ModuleType:
    return _render_docs()


@pytest.fixture()
def copy_root(tmp_path: Path) -> Path:
    """README, docs/*.md and the result files, so a test can make them drift without touching ours."""
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    return tmp_path


def test_docs_are_fresh(render_docs: ModuleType) -> None:
    assert render_docs.run(ROOT, write=False) == [], "regenerate: python bench/render_docs.py"


def test_every_block_name_has_a_renderer_and_is_used(render_docs: ModuleType) -> None:
    text = "".join(p.read_text() for p in render_docs.doc_files(ROOT) if p.exists())
    used = {m.group("name") for m in render_docs.BLOCK.finditer(text)}
    assert used == set(render_docs.RENDERERS)


def test_check_names_a_hand_edited_block_and_render_repairs_it(
        render_docs: ModuleType, copy_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = copy_root / "README.md"
    fresh = readme.read_text()
    row = "| our gateway, named provider | json, 1 | "
    edited = fresh.replace(row, row + "9", 1)
    assert edited != fresh
    readme.write_text(edited)
    assert render_docs.main(["--check", "--root", str(copy_root)]) == 1
    assert "stale: README.md: perf" in capsys.readouterr().out
    assert readme.read_text() == edited  # --check writes nothing
    assert render_docs.main(["--root", str(copy_root)]) == 0
    assert readme.read_text() == fresh


def test_a_changed_result_file_makes_its_block_stale(render_docs: ModuleType, copy_root: Path) -> None:
    path = copy_root / "docs" / "results" / "scale_bench.json"
    data = json.loads(path.read_text())
    data["workers"]["ratio"] = 1.93
    path.write_text(json.dumps(data))
    assert render_docs.run(copy_root, write=False) == ["README.md: scale", "docs/BENCHMARKS.md: scale"]
    render_docs.run(copy_root, write=True)
    assert "req/s ratio 1.93" in (copy_root / "README.md").read_text()


def test_load_average_is_in_the_caption_when_recorded(render_docs: ModuleType, copy_root: Path) -> None:
    path = copy_root / "docs" / "results" / render_docs.GATEWAY_RESULT
    data = json.loads(path.read_text())
    data["machine"]["load_avg_at_end"] = [8.5, 7.0, 6.0]
    path.write_text(json.dumps(data))
    assert "load average 8.5 at the end of the run" in render_docs.perf_table(copy_root)
    del data["machine"]["load_avg_at_end"]
    path.write_text(json.dumps(data))
    assert "load average not recorded" in render_docs.perf_table(copy_root)


def test_unknown_block_or_missing_result_file_exits_2(
        render_docs: ModuleType, copy_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = copy_root / "docs" / "EXTRA.md"
    doc.write_text("<!-- generated: nope (from nowhere) -->\nold\n<!-- end generated: nope -->\n")
    assert render_docs.main(["--check", "--root", str(copy_root)]) == 2
    assert "no renderer for generated block 'nope'" in capsys.readouterr().err
    doc.unlink()
    (copy_root / "docs" / "results" / "scale_bench.json").unlink()
    assert render_docs.main(["--check", "--root", str(copy_root)]) == 2
    assert "scale_bench.json: result file missing" in capsys.readouterr().err
