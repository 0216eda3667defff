"""Descriptor-keyed experts: read, publish through the store, install on a replica without the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gateway.config import parse_config
from gateway.experts import install_experts, publish_descriptors, read_descriptor
from gateway.store import MemoryStore


class FakeIndexRouter:
    """Records add_expert calls; rejects wrong dimensions as the real router does."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.added: dict[str, np.ndarray] = {}

    def add_expert(self, name: str, descriptor: np.ndarray) -> None:
        if descriptor.shape != (self.dim,):
            raise ValueError(f"descriptor has shape {descriptor.shape}, expected ({self.dim},)")
        self.added[name] = descriptor


def _config(path: Path) -> object:
    return parse_config({"providers": [{"name": "newbie", "model": "openai/x", "api_base": "http://x/v1",
                                        "input_usd_per_mtok": 1, "output_usd_per_mtok": 1,
                                        "descriptor": str(path)}]}, env={})


def test_read_descriptor_formats_and_guards(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"vector": [0.1, 0.2]}))
    (tmp_path / "b.json").write_text(json.dumps([0.3, 0.4]))
    np.save(tmp_path / "c.npy", np.array([0.5, 0.6]))
    assert read_descriptor(tmp_path / "a.json") == [0.1, 0.2]
    assert read_descriptor(tmp_path / "b.json") == [0.3, 0.4]
    assert read_descriptor(tmp_path / "c.npy") == [0.5, 0.6]
    (tmp_path / "bad.json").write_text(json.dumps([0.1, float("nan")]))
    with pytest.raises(ValueError):
        read_descriptor(tmp_path / "bad.json")


async def test_a_replica_without_the_file_installs_from_the_store(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps([0.1, 0.2, 0.3]))
    config = _config(path)
    assert config.providers[0].expert == "newbie"  # type: ignore[attr-defined]
    store = MemoryStore()
    await publish_descriptors(config, store)  # type: ignore[arg-type]
    path.unlink()  # the other replica does not have the file
    router = FakeIndexRouter(3)
    installed: dict[str, str] = {}
    assert await install_experts(config, store, router, installed) == []  # type: ignore[arg-type]
    assert np.allclose(router.added["newbie"], [0.1, 0.2, 0.3]) and "newbie" in installed
    # nothing to do the second time
    router.added.clear()
    assert await install_experts(config, store, router, installed) == []  # type: ignore[arg-type]
    assert router.added == {}


async def test_problems_are_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps([0.1, 0.2]))
    config = _config(path)
    problems = await install_experts(config, MemoryStore(), FakeIndexRouter(3), {})  # type: ignore[arg-type]
    assert len(problems) == 1 and "rejected" in problems[0]
    path.unlink()
    problems = await install_experts(config, MemoryStore(), FakeIndexRouter(3), {})  # type: ignore[arg-type]
    assert len(problems) == 1 and "neither readable" in problems[0]
