"""Scorer and footprint speed: answers (or probes) per second and peak RSS of this process.

    cscr describe bench --n 64                       # perplexity scorer on recorded answers
    cscr describe bench --n 32 --logit gemma3-270m   # plus a logit footprint's time

Peak RSS is ``ru_maxrss`` of the whole process (model weights, torch, pandas included).
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def bench(
    benchmark: str = "routerbench",
    n: int = 64,
    models: tuple[str, ...] | None = None,
    scorer: str = "smollm2-135m",
    logit_lms: tuple[str, ...] = (),
    threads: int = 2,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Time the perplexity scorer on ``models``' recorded answers (no cache) and, optionally, logit
    footprints of ``logit_lms`` on the same probes. ``models`` None: the first two with recorded answers."""
    from descriptors.lm import load_lm
    from descriptors.logit import logit_descriptor
    from descriptors.perplexity import ScoreSettings, answer_nll, recorded_answers, recorded_models
    from descriptors.probes import build_probe_set

    probes = build_probe_set(benchmark, n=n)
    t0 = time.perf_counter()
    lm = load_lm(scorer, threads=threads)
    out: dict[str, Any] = {"probe_set": probes.id, "threads": threads, "scorer_load_s": time.perf_counter() - t0}
    models = models or tuple(recorded_models(benchmark)[:2])
    answers = [recorded_answers(probes, m) for m in models]
    settings = ScoreSettings(batch_size=batch_size)
    t0 = time.perf_counter()
    for a in answers:
        answer_nll(lm, probes.texts, a, settings)
    seconds = time.perf_counter() - t0
    n_answers = sum(1 for a in answers for x in a if x and x.strip())
    n_tokens = sum(min(len(lm.encode(" " + x.strip())), settings.max_answer_tokens)
                   for a in answers for x in a if x and x.strip())
    out.update(models=list(models), scorer=lm.scorer_id, answers=n_answers, answer_tokens=n_tokens,
               scorer_s=seconds, answers_per_s=n_answers / seconds, answer_tokens_per_s=n_tokens / seconds,
               peak_rss_mb_after_scorer=peak_rss_mb())
    for name in logit_lms:
        model = lm if name == scorer else load_lm(name, threads=threads)
        d = logit_descriptor(model, probes)
        out[f"footprint_s[{name}]"] = d.settings["seconds"]
        out[f"peak_rss_mb_after[{name}]"] = peak_rss_mb()
    return out
