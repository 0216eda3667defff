"""Descriptor-keyed experts: read, publish through the store, install on a replica without the file."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gateway.config import parse_config
from gateway.experts import install_experts, publish_descriptors, read_descriptor
from gateway.store import MemoryStore
from router_core.types import Descriptor, DescriptorError, DescriptorSpec, check_descriptor

SPEC = DescriptorSpec("perplexity", "routerbench-n192-s0-c5d4cbe984da", "smollm2-135m@0.1.2",
                      settings={"max_prompt_tokens": 128, "max_answer_tokens": 64})


def _doc(vector: list[float], **over: object) -> dict[str, object]:
    """A descriptor document in SPEC's space (``over`` changes a field)."""
    return {"vector": vector, "kind": SPEC.kind, "probe_set": SPEC.probe_set, "scorer": SPEC.scorer,
            "model": "m", "settings": dict(SPEC.settings), **over}


class FakeIndexRouter:
    """Records add_expert calls; refuses other spaces and wrong dimensions as the real routers do."""

    name = "fake"
    blocking = False

    def __init__(self, dim: int, spec: DescriptorSpec | None = SPEC) -> None:
        self.dim = dim
        self.descriptor_spec = spec
        self.added: dict[str, np.ndarray] = {}

    def add_expert(self, name: str, descriptor: Descriptor) -> None:
        check_descriptor(self.descriptor_spec, descriptor)
        if descriptor.dim != self.dim:
            raise DescriptorError(f"descriptor has {descriptor.dim} values, expected {self.dim}")
        self.added[name] = np.asarray(descriptor.vector)


def _config(path: Path) -> object:
    return parse_config({"providers": [{"name": "newbie", "model": "openai/x", "api_base": "http://x/v1",
                                        "input_usd_per_mtok": 1, "output_usd_per_mtok": 1,
                                        "descriptor": str(path)}]}, env={})


def test_read_descriptor_formats_and_guards(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(_doc([0.1, 0.2])))
    assert read_descriptor(tmp_path / "a.json").vector == [0.1, 0.2]
    assert read_descriptor(tmp_path / "a.json").spec == SPEC
    (tmp_path / "bare.json").write_text(json.dumps([0.3, 0.4]))  # says nothing of its space
    with pytest.raises(DescriptorError, match="bare vector"):
        read_descriptor(tmp_path / "bare.json")
    (tmp_path / "nokind.json").write_text(json.dumps({"vector": [0.3, 0.4]}))
    with pytest.raises(DescriptorError, match="nokind.json: missing field 'kind'"):
        read_descriptor(tmp_path / "nokind.json")
    (tmp_path / "bad.json").write_text(json.dumps(_doc([0.1, float("nan")])))
    with pytest.raises(DescriptorError):
        read_descriptor(tmp_path / "bad.json")
    # graded: NaN (null) means "not asked"; values must be grades
    graded = Descriptor([1.0, float("nan"), 0.0], "graded", "graded-n3-0", "letter-v1", "m")
    graded.save(tmp_path / "g.json")
    assert json.loads((tmp_path / "g.json").read_text())["vector"] == [1.0, None, 0.0]
    assert read_descriptor(tmp_path / "g.json").vector[0] == 1.0
    with pytest.raises(DescriptorError):
        Descriptor([2.0], "graded", "graded-n3-0", "letter-v1", "m")


def test_one_rule_refuses_another_space_or_version_naming_the_field() -> None:
    d = Descriptor.from_dict(_doc([0.6, 0.8]))
    assert SPEC.incompatibility(d.spec) is None
    cases = {"probe_set": _doc([0.6, 0.8], probe_set="routerbench-n64-s0-000000000000"),
             "version": _doc([0.6, 0.8], version=2), "kind": _doc([0.6, 0.8], kind="logit"),
             "scorer": _doc([0.6, 0.8], scorer="other@1"),
             "settings.max_prompt_tokens": _doc([0.6, 0.8], settings={"max_prompt_tokens": 256})}
    for field, doc in cases.items():
        why = SPEC.incompatibility(Descriptor.from_dict(doc).spec, "file x.json")
        assert why is not None and why.startswith("file x.json: field") and f"'{field}'" in why, (field, why)


async def test_a_replica_without_the_file_installs_from_the_store(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps(_doc([0.1, 0.2, 0.3])))
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
    path.write_text(json.dumps(_doc([0.1, 0.2])))
    config = _config(path)
    problems = await install_experts(config, MemoryStore(), FakeIndexRouter(3), {})  # type: ignore[arg-type]
    assert len(problems) == 1 and "rejected" in problems[0]
    path.write_text(json.dumps(_doc([0.1, 0.2, 0.3], probe_set="routerbench-n3-s1-000000000000")))
    problems = await install_experts(config, MemoryStore(), FakeIndexRouter(3), {})  # type: ignore[arg-type]
    assert len(problems) == 1 and "rejected" in problems[0] and "field 'probe_set'" in problems[0]
    path.unlink()
    problems = await install_experts(config, MemoryStore(), FakeIndexRouter(3), {})  # type: ignore[arg-type]
    assert len(problems) == 1 and "neither readable" in problems[0]


def _describing(descriptor: object, **extra: object) -> object:
    return parse_config({"providers": [{"name": "newbie", "model": "openai/x", "api_base": "http://x/v1",
                                        "api_key_env": "NEWBIE_KEY", "input_usd_per_mtok": 1,
                                        "output_usd_per_mtok": 2, "descriptor": descriptor, **extra}]},
                        env={"NEWBIE_KEY": "sk-secret-newbie"})


async def test_a_descriptor_the_router_cannot_compare_is_refused_visibly() -> None:
    from gateway.describe import DescriptorJobs

    async def nothing() -> None:
        return None

    jobs = DescriptorJobs(MemoryStore(), nothing)
    logit = _describing({"logit": "smollm2-135m"})
    problems = await install_experts(logit, MemoryStore(), FakeIndexRouter(192), {}, jobs)  # type: ignore[arg-type]
    assert len(problems) == 1 and "perplexity descriptor space" in problems[0] and "not be comparable" in problems[0]
    learned = FakeIndexRouter(9, spec=None)
    unspecified = await install_experts(_describing("probe"), MemoryStore(), learned, {}, jobs)  # type: ignore[arg-type]
    assert "adds no experts from descriptors" in unspecified[0]
    assert jobs.status == {}  # nothing was started


def test_probe_job_command_carries_the_spec_and_no_secret() -> None:
    from gateway.describe import cache_key, command

    cfg = _describing({"probe": {"max_cost_usd": 0.3, "concurrency": 2}})
    p = cfg.providers[0]  # type: ignore[attr-defined]
    cmd = command(p, SPEC, Path("/tmp/out.json"))
    joined = " ".join(cmd)
    assert "sk-secret-newbie" not in joined and "--api-key-env CSCR_PROBE_API_KEY" in joined
    for part in ("describe live", "--benchmark routerbench", "--n 192", "--seed 0", "--scorer smollm2-135m",
                 "--max-cost-usd 0.3", "--concurrency 2", "--max-answer-tokens 64", "--input-usd-per-mtok 1.0"):
        assert part in joined, part
    shipped = " ".join(command(p, replace(SPEC, probes_file="/art/probes.json"), Path("/tmp/o.json")))
    assert "--probes /art/probes.json" in shipped and "--probes" not in joined
    # the cache key changes with the provider, the model string, the probe set and the scorer
    other = parse_config({"providers": [{"name": "newbie", "model": "openai/y", "api_base": "http://x/v1",
                                         "input_usd_per_mtok": 1, "output_usd_per_mtok": 2,
                                         "descriptor": "probe"}]}, env={}).providers[0]
    keys = {cache_key(p, SPEC), cache_key(other, SPEC), cache_key(p, replace(SPEC, scorer="other@1")),
            cache_key(p, replace(SPEC, probe_set="routerbench-n64-s0-000000000000"))}
    assert len(keys) == 4


async def test_failed_descriptor_is_retried_when_due(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import time

    from gateway import describe
    from gateway.describe import DESCRIPTOR_DOCS, DescriptorJobs, attempt_id, cache_key

    p = _describing("probe").providers[0]  # type: ignore[attr-defined]
    store = MemoryStore()
    done = asyncio.Event()

    async def on_done() -> None:
        done.set()

    async def fake_child(self: DescriptorJobs, prov: object, spec: object) -> dict[str, object]:
        return {**_doc([0.6, 0.8]), "sha256": "x", "report": {"answered": 192}}

    monkeypatch.setattr(DescriptorJobs, "_child", fake_child)
    jobs = DescriptorJobs(store, on_done)
    key = cache_key(p, SPEC)
    await store.put_doc(DESCRIPTOR_DOCS, key, {"error": "boom", "failed_at": time.time(), "attempt": attempt_id(p)})
    with pytest.raises(RuntimeError, match="boom"):
        await jobs.ensure(p, SPEC)
    assert jobs.status["newbie"]["state"] == "failed" and not jobs.waiting  # not due yet
    # due: the watcher's next install retries (and a changed attempt would retry at once)
    await store.put_doc(DESCRIPTOR_DOCS, key, {"error": "boom", "failed_at": time.time() - describe.RETRY_FAILED_S - 1,
                                               "attempt": attempt_id(p)})
    jobs.status["newbie"]["retry_at"] = 0.0
    assert jobs.waiting
    assert await jobs.ensure(p, SPEC) is None and jobs.status["newbie"]["state"] == "running"
    await asyncio.wait_for(done.wait(), 5)
    made = await jobs.ensure(p, SPEC)
    assert made is not None and made["vector"] == [0.6, 0.8] and jobs.status["newbie"]["state"] == "ready"


async def test_a_finished_job_is_ready_only_once_its_expert_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """/ready said "ready" while the job's on_done still waited to install the expert: a client that
    waited for "ready" could be routed without it. "ready" is now set by the install itself."""
    import asyncio

    from gateway.describe import DescriptorJobs

    p = _describing("probe").providers[0]  # type: ignore[attr-defined]
    seen: list[str] = []
    done = asyncio.Event()

    async def install() -> None:  # what the reloader's on_done does: ensure, then add the expert
        seen.append(jobs.status["newbie"]["state"])
        assert await jobs.ensure(p, SPEC) is not None
        seen.append(jobs.status["newbie"]["state"])
        done.set()

    async def fake_child(self: DescriptorJobs, prov: object, spec: object) -> dict[str, object]:
        return {**_doc([0.6, 0.8]), "sha256": "x", "report": {"answered": 192}}

    monkeypatch.setattr(DescriptorJobs, "_child", fake_child)
    jobs = DescriptorJobs(MemoryStore(), install)
    assert await jobs.ensure(p, SPEC) is None
    await asyncio.wait_for(done.wait(), 5)
    assert seen == ["running", "ready"]
