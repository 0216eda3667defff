"""Live probing: send the probe prompts to a provider through litellm and fingerprint its answers.

For a model with no recorded answers (an API model added to ``gateway.yaml``), ``probe_answers``
sends every probe's FULL benchmark prompt (the prompt the recorded answers of the other models
answer; the scorer later reads the routing text, as for recorded answers) as one user message, at
temperature 0, and collects the answers; ``live_descriptor`` scores them with the shared scorer into a
perplexity fingerprint (``descriptors.perplexity``) in the same space as the recorded ones.

Guarantees:

- **Bounded concurrency** (``concurrency`` calls in flight).
- **Retries** on what may pass (429, 5xx, timeouts, connection errors) with exponential backoff and
  jitter; a 4xx that will not pass (bad request, unknown model) fails that probe at once; an
  authentication/permission error (401/403) or a 404 aborts the whole run, since every other call
  would fail the same way and cost a round trip each.
- **A hard cost cap**: before each call its worst case (prompt tokens, over-estimated as
  ``ceil(chars / 3) + 8``, at the input price + ``max_tokens`` at the output price) is reserved
  against ``max_cost_usd``; a call that does not fit is not sent. After the call the reservation is
  replaced by the cost of its usage (the worst case when the provider reports none). So the spend
  never exceeds the cap, whatever the provider does, as long as it honours ``max_tokens``.
- **No silent averaging**: every failed or unsent probe is listed in the ``ProbeRun`` (index -> last
  error); ``live_descriptor`` refuses (``DescriptorError``) when more than ``max_missing`` of the
  probes have no answer, and otherwise records the count and the ids in the descriptor's settings
  (the vector imputes them with the median, as for empty recorded answers).
- A progress bar (tqdm) when asked.

The answers of a run are cached (``cache_dir()/descriptors/live/``, keyed by the model string,
api_base, probe set and generation settings): re-scoring, or a run that stopped at the cap and is
resumed with a higher one, does not pay again for the answers it has.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from descriptors.probes import ProbeSet
from descriptors.types import Descriptor, DescriptorError
from router_core.paths import cache_dir, write_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveTarget:
    """Where to send the probes: a litellm model string and what it needs."""

    model: str  # e.g. "openai/gpt-4o-mini"
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    input_usd_per_mtok: float = 0.0
    output_usd_per_mtok: float = 0.0
    timeout_s: float = 60.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_usd_per_mtok + completion_tokens * self.output_usd_per_mtok) / 1e6


@dataclass(frozen=True)
class ProbeSettings:
    concurrency: int = 4
    retries: int = 2  # extra attempts per probe after the first
    max_cost_usd: float = 1.0
    max_tokens: int = 256  # answer tokens asked for (the scorer reads the first 64)
    temperature: float = 0.0
    backoff_s: float = 0.5  # first retry delay; doubles per attempt, with jitter

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.retries < 0 or self.max_tokens < 1:
            raise DescriptorError("probe settings: concurrency and max_tokens must be >= 1, retries >= 0")
        if not (self.max_cost_usd >= 0 and math.isfinite(self.max_cost_usd)):
            raise DescriptorError("probe settings: max_cost_usd must be a finite number >= 0")

    def key(self) -> str:
        return f"t{self.temperature:g}-m{self.max_tokens}"


@dataclass
class ProbeRun:
    """What a live run got: one answer per probe (None where it has none) and why."""

    answers: list[str | None]
    errors: dict[int, str]  # probe index -> last error, for every probe without an answer
    spent_usd: float
    calls: int
    seconds: float
    capped: bool  # some probes were not sent because the cost cap would have been passed
    aborted: str | None = None  # why the run stopped early (authentication, unknown model)
    cached: int = 0  # answers taken from an earlier run's cache

    @property
    def n_answered(self) -> int:
        return sum(a is not None for a in self.answers)

    @property
    def missing(self) -> list[int]:
        return [i for i, a in enumerate(self.answers) if a is None]

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for err in self.errors.values():
            kinds[err.split(":", 1)[0]] = kinds.get(err.split(":", 1)[0], 0) + 1
        return {
            "answered": self.n_answered,
            "probes": len(self.answers),
            "missing": len(self.missing),
            "errors_by_kind": kinds,
            "spent_usd": round(self.spent_usd, 9),
            "calls": self.calls,
            "seconds": round(self.seconds, 2),
            "capped": self.capped,
            "aborted": self.aborted,
            "cached": self.cached,
        }


def estimate_prompt_tokens(text: str) -> int:
    """An over-estimate of a prompt's tokens for the cost cap (BPE tokenisers average ~4 chars/token
    on English; 3 leaves room for code and other scripts), plus the chat template's overhead."""
    return math.ceil(len(text) / 3) + 8


class _Fatal(Exception):
    """An error that every further call would repeat (bad key, unknown model)."""


def _classify(exc: BaseException) -> tuple[bool, bool, str]:
    """(retryable, fatal, label) of a litellm / transport exception."""
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    label = f"{name}{f' {status}' if status else ''}: {str(exc)[:200]}"
    if isinstance(exc, TimeoutError | ConnectionError) or "Timeout" in name or "Connection" in name:
        return True, False, label
    if isinstance(status, int):
        if status in (401, 403, 404):
            return False, True, label
        if status == 429 or status >= 500:
            return True, False, label
        return False, False, label
    if "RateLimit" in name or "ServiceUnavailable" in name or "InternalServer" in name:
        return True, False, label
    if "Authentication" in name or "PermissionDenied" in name or "NotFound" in name:
        return False, True, label
    return True, False, label  # unknown: worth another try, bounded by ``retries``


def _answers_cache(target: LiveTarget, probes: ProbeSet, settings: ProbeSettings) -> Path:
    key = json.dumps([target.model, target.api_base, probes.id, settings.key()])
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", target.model)[:60]
    tag = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / "descriptors" / "live" / probes.id / f"{safe}-{tag}.json"


def _load_cached(path: Path, n: int) -> list[str | None]:
    try:
        raw = json.loads(path.read_text())["answers"]
        if isinstance(raw, list) and len(raw) == n:
            return [a if isinstance(a, str) else None for a in raw]
    except (OSError, ValueError, KeyError):
        pass
    return [None] * n


async def probe_answers(
    target: LiveTarget,
    probes: ProbeSet,
    prompts: Sequence[str],
    settings: ProbeSettings | None = None,
    progress: bool = False,
    use_cache: bool = True,
    completion: Callable[..., Any] | None = None,
) -> ProbeRun:
    """Send ``prompts`` (one per probe, in probe order) to ``target``; see the module doc.

    ``completion`` is litellm's ``acompletion`` unless given (same signature and response shape).
    """
    settings = settings or ProbeSettings()
    if len(prompts) != len(probes):
        raise DescriptorError(f"{len(prompts)} prompts for {len(probes)} probes")
    if completion is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch litellm's price map
        import litellm

        completion = litellm.acompletion
    cache = _answers_cache(target, probes, settings)
    answers: list[str | None] = _load_cached(cache, len(probes)) if use_cache else [None] * len(probes)
    cached = sum(a is not None for a in answers)
    errors: dict[int, str] = {}
    state = {"spent": 0.0, "reserved": 0.0, "calls": 0, "capped": False}
    aborted: list[str] = []
    lock = asyncio.Lock()
    sem = asyncio.Semaphore(settings.concurrency)
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(probes), initial=cached, desc=f"probe {target.model}", unit="probe")

    async def reserve(worst: float) -> bool:
        async with lock:
            if state["spent"] + state["reserved"] + worst > settings.max_cost_usd + 1e-15:
                state["capped"] = True
                return False
            state["reserved"] += worst
            return True

    async def settle(worst: float, actual: float) -> None:
        async with lock:
            state["reserved"] -= worst
            state["spent"] += actual

    async def call(prompt: str, worst: float) -> tuple[str, float]:
        """One completion: (answer text, its cost; the worst case when the provider reports no usage)."""
        state["calls"] += 1
        resp = await completion(
            model=target.model,
            messages=[{"role": "user", "content": prompt}],
            api_base=target.api_base,
            # a self-hosted endpoint without auth still needs some key for litellm
            api_key=target.api_key or ("unused" if target.api_base else None),
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            timeout=target.timeout_s,
            num_retries=0,
        )
        usage = getattr(resp, "usage", None)
        cost = worst
        if usage is not None and getattr(usage, "prompt_tokens", None) is not None:
            cost = target.cost(int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0))
        text = resp.choices[0].message.content
        return (text if isinstance(text, str) else ""), cost

    async def one(i: int) -> None:
        """Probe ``i`` with retries; its answer goes to ``answers``, or why not to ``errors``."""
        worst = target.cost(estimate_prompt_tokens(prompts[i]), settings.max_tokens)
        for attempt in range(settings.retries + 1):
            if attempt:
                await asyncio.sleep(settings.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()))
            async with sem:
                if aborted:
                    errors[i] = f"Aborted: {aborted[0]}"
                    return
                if not await reserve(worst):
                    errors[i] = f"CostCap: not sent, the ${settings.max_cost_usd} cap would be passed"
                    return
                actual = worst  # a failed call without usage is charged its worst case
                try:
                    answers[i], actual = await call(prompts[i], worst)
                    errors.pop(i, None)
                    return
                except Exception as exc:  # classified here; nothing escapes a probe
                    retryable, fatal, label = _classify(exc)
                    errors[i] = label
                    if fatal:
                        aborted.append(label)
                    if fatal or not retryable:
                        return
                finally:
                    await settle(worst, actual)

    async def counted(i: int) -> None:
        await one(i)
        if bar is not None:
            bar.update(1)

    t0 = time.perf_counter()
    todo = [i for i, a in enumerate(answers) if a is None]
    await asyncio.gather(*(counted(i) for i in todo))
    if bar is not None:
        bar.close()
    if use_cache and any(a is not None for a in answers):
        write_atomic(cache, json.dumps({"model": target.model, "api_base": target.api_base, "probe_set": probes.id,
                                        "settings": asdict(settings), "answers": answers}))
    return ProbeRun(
        answers=answers,
        errors={i: errors.get(i, "Unknown: no answer") for i, a in enumerate(answers) if a is None},
        spent_usd=float(state["spent"]),
        calls=int(state["calls"]),
        seconds=time.perf_counter() - t0,
        capped=bool(state["capped"]),
        aborted=aborted[0] if aborted else None,
        cached=cached,
    )


def probe_prompts(probes: ProbeSet, data_dir: Path | None = None) -> list[str]:
    """The full benchmark prompt of every probe (what a live model is asked): from the probe set
    itself when it carries them (a probe set file), else from the benchmark data."""
    if probes.prompts:
        return list(probes.prompts)
    from router_core.data import load_benchmark

    bench = load_benchmark(probes.benchmark, data_dir)
    row = {pid: i for i, pid in enumerate(bench.prompt_ids)}
    missing = [pid for pid in probes.prompt_ids if pid not in row]
    if missing:
        raise DescriptorError(f"probe set {probes.id}: {len(missing)} prompt ids not in the data (first {missing[0]})")
    return [bench.prompts[row[pid]] for pid in probes.prompt_ids]


def live_descriptor(
    name: str,
    target: LiveTarget,
    probes: ProbeSet,
    load_scorer: Callable[[], Any],
    settings: ProbeSettings | None = None,
    max_missing: float = 0.25,
    progress: bool = False,
    data_dir: Path | None = None,
    score_settings: Any = None,
    completion: Callable[..., Any] | None = None,
) -> tuple[Descriptor, ProbeRun]:
    """Probe ``target`` live and return its perplexity fingerprint and the run's report.

    Raises ``DescriptorError`` (with the run's summary) when more than ``max_missing`` of the probes
    have no answer; otherwise the missing ones are imputed and listed in ``settings``. The scorer
    (``load_scorer()``) is loaded only once the answers are in: a run that fails costs no model load.
    """
    from descriptors.perplexity import perplexity_descriptor

    settings = settings or ProbeSettings()
    prompts = probe_prompts(probes, data_dir)
    run = asyncio.run(probe_answers(target, probes, prompts, settings, progress=progress, completion=completion))
    missing = run.missing
    if run.aborted or len(missing) > max_missing * len(probes):
        raise DescriptorError(
            f"live probing of {target.model} left {len(missing)}/{len(probes)} probes unanswered "
            f"(limit {max_missing:.0%}): {json.dumps(run.summary())}"
        )
    d = perplexity_descriptor(name, probes, load_scorer(), answers=run.answers, settings=score_settings)
    info = {
        "source": "live",
        "litellm_model": target.model,
        "api_base": target.api_base,
        "probe": asdict(settings),
        "run": run.summary(),
        "missing_probe_ids": [probes.prompt_ids[i] for i in missing],
    }
    return Descriptor(d.vector, d.kind, d.probe_set, d.scorer, d.model, {**d.settings, **info}), run
