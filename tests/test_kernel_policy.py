"""The kernel-shrink router as a gateway policy: the bundled artifact, the rule, hot-add."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from router_core.kernel_policy import KernelShrinkPolicy, load_policy
from router_core.paths import artifacts_dir
from router_core.router import load_routing_policy
from router_core.types import Candidate, Descriptor, DescriptorError

pytestmark = pytest.mark.slow  # loads the static encoder
ARTIFACT = artifacts_dir() / "routerbench-kernel-shrink"
PRICES = {"gpt-4-1106-preview": 0.02, "gpt-3.5-turbo-1106": 0.002, "mistralai/mistral-7b-chat": 0.0003,
          "claude-v2": 0.015}


@pytest.fixture(scope="module")
def policy() -> KernelShrinkPolicy:
    loaded = load_routing_policy(ARTIFACT)
    assert isinstance(loaded, KernelShrinkPolicy)
    assert loaded.blocking is False  # static encoder: ~0.5 ms a decision, on the gateway's event loop
    return loaded


def _candidates(extra: dict[str, float] | None = None) -> list[Candidate]:
    prices = {**PRICES, **(extra or {})}
    return [Candidate(f"p-{e}", e, c) for e, c in prices.items()] + [Candidate("stranger", None, 0.0001)]


def test_every_candidate_once_unknown_last(policy: KernelShrinkPolicy) -> None:
    ranking = policy.rank("Which gas do plants absorb?\nA) O2\nB) CO2\nAnswer:", _candidates(), 0.5)
    assert sorted(ranking.names) == sorted(c.name for c in _candidates())
    assert ranking.names[-1] == "stranger" and ranking.policy == "kernel-shrink"
    scores = [s.score for s in ranking.order]
    assert scores == sorted(scores, reverse=True)


def test_tradeoff_ends(policy: KernelShrinkPolicy) -> None:
    prompt = "Write a python function to find the maximum of three numbers."
    cheapest = policy.rank(prompt, _candidates(), 1.0)
    assert cheapest.names[0] == "p-mistralai/mistral-7b-chat"
    best = policy.rank(prompt, _candidates(), 0.0)
    p_hat = policy.predict(prompt)
    top = max(PRICES, key=lambda e: p_hat[policy.experts.index(e)])
    assert best.names[0] == f"p-{top}"
    assert 0.0 == policy.lam(0.0) <= policy.lam(0.5) <= policy.lam(1.0)


def test_new_model_joins_by_its_probe_answers(tmp_path: Path) -> None:
    policy = load_policy(ARTIFACT)
    n_probes = len(json.loads((ARTIFACT / "config.json").read_text())["probe_ids"])
    spec = policy.descriptor_spec

    def graded(vector: list[float], **over: str) -> Descriptor:
        fields = {"kind": spec.kind, "probe_set": spec.probe_set, "scorer": spec.scorer, **over}
        return Descriptor(vector, fields["kind"], fields["probe_set"], fields["scorer"], "m", dict(spec.settings))

    with pytest.raises(DescriptorError, match="probe_set"):  # another probe set: refused, field named
        policy.add_expert("oracle-like", graded([1.0] * n_probes, probe_set="graded-n3-000000000000"))
    with pytest.raises(DescriptorError):
        policy.add_answers("oracle-like", np.ones(3))
    policy.add_expert("always-right", graded([1.0] * n_probes))  # right on every probe prompt
    cands = [*_candidates(), Candidate("newcomer", "always-right", 0.001)]
    ranking = policy.rank("Which gas do plants absorb?\nA) O2\nB) CO2\nAnswer:", cands, 0.0)
    assert ranking.names[0] == "newcomer"
