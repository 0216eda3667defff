"""The probe set: a fixed, seeded, versioned sample of training prompts every descriptor is made on.

Drawn from the training split only (no test prompt is ever seen by a descriptor). For MMLU-Pro the
draw is restricted to the 2,026 questions with recorded answers (``responses.parquet``), which the
loader always puts in ``train``. The probe text is ``router_core.encoder.routing_text`` of the
prompt (head 200 + last block, at most ~1,000 characters): the part of a request the router reads,
and a bound on the cost of scoring or generating on it.

The id is a hash of everything that defines the set (format version, benchmark, data file hashes,
split, seed, N, the chosen prompt ids and their texts), so two descriptors with the same
``probe_set`` were made on exactly the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router_core.paths import write_atomic

PROBE_FORMAT = 1
DEFAULT_N = 192
DEFAULT_SEED = 0
_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class ProbeSet:
    """N probe prompts with their benchmark row ids."""

    benchmark: str
    seed: int
    prompt_ids: tuple[str, ...]
    texts: tuple[str, ...]  # routing_text of each prompt
    data_versions: tuple[tuple[str, str], ...]  # (file, sha256)
    # the full prompts (what a live model is asked); not part of the id, which the ids, texts and
    # data hashes already fix. Empty when unknown: then they are read from the data.
    prompts: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def id(self) -> str:
        """``<benchmark>-n<N>-s<seed>-<12 hex>``: readable, and exact through the hash."""
        blob = json.dumps(
            [PROBE_FORMAT, self.benchmark, self.seed, self.data_versions, self.prompt_ids, self.texts],
            ensure_ascii=True,
        )
        digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
        return f"{self.benchmark}-n{len(self)}-s{self.seed}-{digest}"

    def save(self, path: str | Path) -> None:
        """A self-contained probe set file: a router artifact ships it, so live probing needs no
        benchmark data (e.g. in a container)."""
        doc = {"format": PROBE_FORMAT, "id": self.id, "benchmark": self.benchmark, "seed": self.seed,
               "data_versions": [list(v) for v in self.data_versions], "prompt_ids": list(self.prompt_ids),
               "texts": list(self.texts), "prompts": list(self.prompts)}
        write_atomic(path, json.dumps(doc, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ProbeSet:
        raw = json.loads(Path(path).read_text())
        if raw.get("format") != PROBE_FORMAT:
            raise ValueError(f"probe set file {path}: format {raw.get('format')} != {PROBE_FORMAT}")
        probes = cls(
            benchmark=raw["benchmark"],
            seed=int(raw["seed"]),
            prompt_ids=tuple(raw["prompt_ids"]),
            texts=tuple(raw["texts"]),
            data_versions=tuple((str(a), str(b)) for a, b in raw["data_versions"]),
            prompts=tuple(raw.get("prompts") or ()),
        )
        if probes.id != raw["id"] or (probes.prompts and len(probes.prompts) != len(probes)):
            raise ValueError(f"probe set file {path}: content does not match its id {raw['id']}")
        return probes

    def string_basis(self, k: int) -> list[str]:
        """The ``k`` most frequent lower-cased words / punctuation marks of the probe texts.

        The logit footprint's coordinates: defined on strings, not on any tokenizer's ids, so models
        with different vocabularies land in one space. Ties break alphabetically (deterministic).
        """
        counts = Counter(w.lower() for t in self.texts for w in _WORD.findall(t))
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if len(ranked) < k:
            raise ValueError(f"probe set {self.id} has only {len(ranked)} distinct words; asked for {k}")
        return [w for w, _ in ranked[:k]]


def build_probe_set(
    benchmark: str = "routerbench", n: int = DEFAULT_N, seed: int = DEFAULT_SEED, data_dir: Path | None = None
) -> ProbeSet:
    """A seeded draw of ``n`` training prompts of ``benchmark`` (``routerbench`` | ``mmlu_pro``)."""
    from router_core.data import load_benchmark
    from router_core.encoder import routing_text

    bench = load_benchmark(benchmark, data_dir)
    pool = bench.split == "train"
    if benchmark == "mmlu_pro":
        pool &= bench.extra["probe"].astype(bool)  # only questions with recorded answers
    rows = np.flatnonzero(pool)
    if n > len(rows):
        raise ValueError(f"{benchmark}: asked for {n} probes, only {len(rows)} training prompts")
    chosen = np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))
    return ProbeSet(
        benchmark=benchmark,
        seed=seed,
        prompt_ids=tuple(bench.prompt_ids[i] for i in chosen),
        texts=tuple(routing_text(bench.prompts[i]) for i in chosen),
        data_versions=tuple(sorted(bench.versions.items())),
        prompts=tuple(bench.prompts[i] for i in chosen),
    )
