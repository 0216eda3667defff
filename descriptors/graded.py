"""Graded onboarding: a provider answers the router's gradable probes and is graded on them.

For a kernel-shrink router (``descriptor_spec.kind == "graded"``), a new model's descriptor is its
graded answers on the router's probe prompts. ``graded_descriptor`` draws a seeded, stratified
subset of N of the artifact's gradable probes (``router_core.graded.GradedProbes``, shipped in the
artifact: prompts and gold letters, no benchmark data needed), sends them through the same live
prober as the perplexity fingerprint (``descriptors.live.probe_answers``: bounded concurrency,
retries, a hard cost cap, cached answers), and grades each answer by its letter. The vector has
1 / 0 on the probes that were answered and NaN everywhere else (not asked, not sent because of the
cap, failed): unknown, never wrong. An answer with no letter is wrong and counted (``ungradable``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from descriptors.live import LiveTarget, ProbeRun, ProbeSettings, probe_answers
from descriptors.probes import ProbeSet
from descriptors.types import Descriptor, DescriptorError
from router_core.graded import GRADER, GradedProbes, GradeReport


def subset_probe_set(probes: GradedProbes, picks: list[int], seed: int) -> ProbeSet:
    """The drawn probes as a ``ProbeSet`` (what the live prober sends and caches by)."""
    return ProbeSet(benchmark=probes.id, seed=seed, prompt_ids=tuple(probes.ids[i] for i in picks),
                    texts=tuple(probes.prompts[i] for i in picks), data_versions=(),
                    prompts=tuple(probes.prompts[i] for i in picks))


def graded_descriptor(
    name: str,
    target: LiveTarget,
    probes: GradedProbes,
    n: int,
    seed: int = 0,
    settings: ProbeSettings | None = None,
    max_missing: float = 0.25,
    progress: bool = False,
    completion: Callable[..., Any] | None = None,
) -> tuple[Descriptor, ProbeRun, GradeReport]:
    """Probe ``target`` with ``n`` graded probes and return its graded descriptor, the run and the
    grading report. ``DescriptorError`` when the run was aborted or more than ``max_missing`` of the
    drawn probes have no answer (a capped run is not refused for the probes it could not afford
    when at least that share was answered)."""
    if n < 1:
        raise DescriptorError("graded probing needs n >= 1 probes")
    settings = settings or ProbeSettings()
    picks = probes.select(n, seed)
    subset = subset_probe_set(probes, picks, seed)
    run = asyncio.run(probe_answers(target, subset, list(subset.prompts), settings, progress=progress,
                                    completion=completion))
    if run.aborted or len(run.missing) > max_missing * len(picks):
        raise DescriptorError(
            f"graded probing of {target.model} left {len(run.missing)}/{len(picks)} probes unanswered "
            f"(limit {max_missing:.0%}): {json.dumps(run.summary())}")
    vector, report = probes.grade(picks, run.answers)
    info = {"source": "live", "litellm_model": target.model, "api_base": target.api_base, "n": len(picks),
            "seed": seed, "probe": asdict(settings), "run": {**run.summary(), **report.summary()},
            "missing_probe_ids": [subset.prompt_ids[i] for i in run.missing],
            **probes.spec().settings}
    return Descriptor(vector, "graded", probes.id, GRADER, name, info), run, report
