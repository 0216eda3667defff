"""The routing rule (a pure function of arrays) and ``CSCRRouter``, the gateway's ``RoutingPolicy``.

Rule (``rank``): among the eligible experts, take the ``top_k`` most similar to the query (all of
them when ``top_k`` is None), order those by ``score = sim − λ·ĉ`` where ``ĉ`` is the normalised
cost, then the other eligible experts by the same score, then the ineligible ones by cost. The
full order is returned so the gateway can fall back along it. The cost term is always on: at λ=0
the rule is pure similarity, as λ grows it moves to cheaper experts (the official CSCR code drops
the cost term at inference; we do not).

Cost normalisation (``normalise_costs``): ``ĉ = (log c − log c_min) / (log c_max − log c_min)``
over the experts being ranked, so ĉ ∈ [0, 1], the cheapest is 0 and the dearest 1 whatever the
currency scale; log because prices across a pool span two or more decades. The same per-prompt
normalisation is used by the training loss.

Trade-off: the gateway's ``tradeoff`` t ∈ [0, 1] maps to λ ∈ [0, λ_max] through a table stored in
the artifact (``calibrate_lam_table``): on the training prompts, t = 0.5 gets the λ whose picks
spend about half the (log-normalised) cost of t = 0's, so the knob moves evenly along the cost
axis instead of doing everything in its first tenth. ``λ_max`` is the 99th percentile, over the
training prompts, of the smallest λ at which the cheapest expert wins, so t → 1 routes (almost)
everything to the cheapest candidate; at t = 1 exactly the order is by cost outright (similarity
breaks ties), so "cheapest" is guaranteed. An artifact without a table maps λ = t · λ_max.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from router_core.encoder import CHECK_TEXT, ROUTING_TEXT_VERSION, encoder_spec, get_encoder, routing_text
from router_core.index import ExpertIndex
from router_core.model import RouterArtifact, numpy_head, numpy_key_map
from router_core.paths import artifacts_dir
from router_core.types import (
    Candidate,
    Descriptor,
    DescriptorError,
    DescriptorSpec,
    Ranking,
    RoutingPolicy,
    Scored,
    check_descriptor,
)

log = logging.getLogger(__name__)

COST_FLOOR_USD = 1e-9  # log of a zero price is undefined; free is treated as 1e-9 USD


def normalise_costs(costs: np.ndarray) -> np.ndarray:
    """Log-cost min-max over the last axis: (..., M) USD -> (..., M) in [0, 1]; all equal -> 0."""
    logc = np.log(np.maximum(np.asarray(costs, dtype=np.float64), COST_FLOOR_USD))
    lo = logc.min(axis=-1, keepdims=True)
    span = logc.max(axis=-1, keepdims=True) - lo
    return np.where(span > 0, (logc - lo) / np.where(span > 0, span, 1.0), 0.0)


def rule_scores(similarities: np.ndarray, costs_norm: np.ndarray, lam: float) -> np.ndarray:
    """``sim − λ·ĉ`` for every expert: (M,) or (N, M)."""
    return np.asarray(similarities, dtype=np.float64) - lam * np.asarray(costs_norm, dtype=np.float64)


def rank(
    similarities: np.ndarray,
    costs: np.ndarray,
    eligible: np.ndarray,
    lam: float,
    top_k: int | None = None,
) -> np.ndarray:
    """The full routing order for one query: indices into the M experts, best first.

    similarities (M,): query-key cosine; costs (M,): normalised costs ĉ in [0, 1]
    (``normalise_costs``); eligible (M,) bool: what the budget allows.

    Order: the ``top_k`` most similar eligible experts ranked by ``sim − λ·ĉ``; then the remaining
    eligible experts by the same score; then the ineligible experts by cost (they are never ahead
    of an eligible one, and the gateway must not send to them; they are listed only so the order
    is a permutation). Ties break on lower cost, then lower index.
    """
    sims = np.asarray(similarities, dtype=np.float64)
    cost = np.asarray(costs, dtype=np.float64)
    ok = np.asarray(eligible, dtype=bool)
    m = sims.shape[0]
    idx = np.arange(m)
    score = rule_scores(sims, cost, lam)
    elig = idx[ok]
    if top_k is not None and top_k < elig.size:
        by_sim = elig[np.lexsort((elig, cost[elig], -sims[elig]))]
        head, rest = by_sim[:top_k], by_sim[top_k:]
    else:
        head, rest = elig, elig[:0]
    head = head[np.lexsort((head, cost[head], -score[head]))]
    rest = rest[np.lexsort((rest, cost[rest], -score[rest]))]
    inel = idx[~ok]
    inel = inel[np.lexsort((inel, -sims[inel], cost[inel]))]
    return np.concatenate([head, rest, inel]).astype(np.int64)


def choose(
    similarities: np.ndarray, costs_norm: np.ndarray, lams: Sequence[float], top_k: int | None = None
) -> np.ndarray:
    """Vectorised first choice for evaluation: (N, M) sims and normalised costs -> (L, N) indices.

    Same rule as ``rank`` with every expert eligible (ties aside).
    """
    sims = np.asarray(similarities, dtype=np.float64)
    cn = np.asarray(costs_norm, dtype=np.float64)
    if top_k is not None and top_k < sims.shape[1]:
        kth = -np.sort(-sims, axis=1)[:, top_k - 1 : top_k]  # (N, 1)
        mask = sims >= kth
    else:
        mask = np.ones_like(sims, dtype=bool)
    out = np.empty((len(lams), sims.shape[0]), dtype=np.int64)
    for i, lam in enumerate(lams):
        out[i] = np.where(mask, rule_scores(sims, cn, lam), -np.inf).argmax(axis=1)
    return out


def calibrate_lam_max(similarities: np.ndarray, costs_norm: np.ndarray, quantile: float = 0.99) -> float:
    """The λ at which the cheapest expert wins for ``quantile`` of the prompts. (N, M) inputs."""
    sims = np.asarray(similarities, dtype=np.float64)
    cn = np.asarray(costs_norm, dtype=np.float64)
    rows = np.arange(sims.shape[0])
    cheapest = cn.argmin(axis=1)
    gap_c = cn - cn[rows, cheapest][:, None]  # (N, M) ≥ 0
    gap_s = sims - sims[rows, cheapest][:, None]  # (N, M)
    need = np.where(gap_c > 1e-12, gap_s / np.where(gap_c > 1e-12, gap_c, 1.0), 0.0).max(axis=1)
    return float(max(np.quantile(np.maximum(need, 0.0), quantile), 1e-3) * 1.01)


def lambda_sweep(lam_max: float, n: int = 400) -> np.ndarray:
    """λ values to trace a deferral curve: 0, then ``n`` geometric steps from 1e-4·λ_max to λ_max.

    Geometric, because the rule's behaviour changes most at small λ (a linear grid of 101 points
    over [0, λ_max] missed most of the curve on MMLU-Pro: AUDC 0.673 vs 0.736 with this sweep).
    """
    return np.concatenate([[0.0], np.geomspace(1e-4, 1.0, n) * lam_max])


def calibrate_lam_table(similarities: np.ndarray, costs_norm: np.ndarray, lam_max: float, n: int = 21) -> list[float]:
    """λ for trade-offs ``linspace(0, 1, n)``, so the trade-off moves evenly along the cost axis.

    On the (N, M) training prompts, trade-off t gets the smallest λ whose picks have a mean
    normalised (log) cost of at most (1 − t) times that at λ = 0: t = 0.5 spends about half as many
    cost decades as t = 0. The last entry is ``lam_max``.
    """
    cn = np.asarray(costs_norm, dtype=np.float64)
    lams = lambda_sweep(lam_max)
    picks = choose(similarities, cn, list(lams))  # (L, N)
    rows = np.arange(cn.shape[0])[None, :]
    spend = np.minimum.accumulate(cn[rows, picks].mean(axis=1))  # (L,) non-increasing
    table = []
    for t in np.linspace(0.0, 1.0, n):
        ok = np.flatnonzero(spend <= (1.0 - t) * spend[0] + 1e-12)
        table.append(float(lams[ok[0]]) if ok.size else float(lam_max))
    table[0], table[-1] = 0.0, float(lam_max)
    return list(np.maximum.accumulate(table))


class TextEncoder(Protocol):
    """What the router needs of an encoder (``encoder.Encoder`` or a test stub)."""

    def encode(self, text: str) -> np.ndarray: ...


class CSCRRouter:
    """A trained CSCR router behind the gateway's ``RoutingPolicy`` contract.

    Candidates are matched to experts by ``Candidate.expert`` (the expert name in the artifact,
    e.g. the RouterBench model column ``gpt-4-1106-preview``); those whose ``expert`` is None or
    unknown go last, cheapest first.
    """

    name = "cscr"

    def __init__(
        self,
        artifact: RouterArtifact,
        top_k: int | None = None,
        encoder: TextEncoder | None = None,
        source: Path | None = None,
    ) -> None:
        self.artifact = artifact
        self.source = source  # the artifact directory, when loaded from one
        shipped = None if source is None else source / "probes.json"
        self._probes_file = str(shipped) if shipped is not None and shipped.exists() else None
        cfg = artifact.config
        if cfg.routing_text and cfg.routing_text != ROUTING_TEXT_VERSION:
            log.warning("router trained with routing text %r, serving with %r", cfg.routing_text, ROUTING_TEXT_VERSION)
        self.top_k = cfg.top_k if top_k is None else top_k
        self.lam_max = artifact.lam_max
        table = artifact.lam_table
        self._lam_table = np.asarray(table, dtype=np.float64) if table else None
        self._lam_grid = np.linspace(0.0, 1.0, len(table)) if table else None
        self.encoder: TextEncoder = get_encoder(cfg.encoder) if encoder is None else encoder
        # head + a search over a handful of keys: ~0.1 ms, so the artifact's encoder decides
        self.blocking = not encoder_spec(cfg.encoder).inline
        self._weights = artifact.weights
        self._check_encoder()
        self.index = ExpertIndex(artifact.experts, artifact.expert_keys)

    def _check_encoder(self) -> None:
        ref = self.artifact.meta.get("encoder", {}).get("check_vector")
        if not ref:
            return
        got = self.encoder.encode(CHECK_TEXT)
        ref_v = np.asarray(ref, dtype=np.float32)
        if got.shape != ref_v.shape or float(got @ ref_v) < 0.99:
            log.warning(
                "encoder %s does not reproduce the artifact's check vector (cosine %.3f): routing may be off",
                self.artifact.config.encoder,
                float(got @ ref_v) if got.shape == ref_v.shape else float("nan"),
            )

    @property
    def experts(self) -> list[str]:
        return self.index.names

    def lam(self, tradeoff: float) -> float:
        """λ for a trade-off in [0, 1]: the artifact's calibrated table, else linear up to λ_max."""
        t = float(min(max(tradeoff, 0.0), 1.0))
        if self._lam_table is not None and self._lam_grid is not None:
            return float(np.interp(t, self._lam_grid, self._lam_table))
        return t * self.lam_max

    def query_vector(self, prompt: str) -> np.ndarray:
        """Unit query vector of a prompt: routing text -> frozen encoder -> head. (out_dim,)"""
        return numpy_head(self._weights, self.encoder.encode(routing_text(prompt)))

    @property
    def descriptor_spec(self) -> DescriptorSpec | None:
        """Which descriptors this router's keys come from (kind, probe set, scorer, settings), so a new
        model's descriptor can be made the same way; None for accuracy fingerprints / learned keys."""
        spec = self.artifact.meta.get("descriptor_spec")
        if not isinstance(spec, dict) or self.artifact.config.keys != "descriptor":
            return None
        return DescriptorSpec.from_dict(spec, self._probes_file)  # probes_file: shipped with the artifact

    def key_for_descriptor(self, descriptor: np.ndarray) -> np.ndarray:
        """Expert key of a model from its descriptor vector (descriptor-keyed artifacts only)."""
        if self.artifact.config.keys != "descriptor":
            raise DescriptorError("this artifact learned its keys; a new expert needs retraining")
        vec = np.asarray(descriptor, dtype=np.float32).reshape(-1)
        if vec.shape[0] != self.artifact.config.descriptor_dim or not np.all(np.isfinite(vec)):
            raise DescriptorError(f"descriptor of dimension {vec.shape[0]} (finite: {bool(np.all(np.isfinite(vec)))}); "
                                  f"this artifact needs {self.artifact.config.descriptor_dim} finite values")
        return numpy_key_map(self._weights, vec[None, :])[0]

    def add_expert(self, name: str, descriptor: Descriptor) -> None:
        """Add or replace an expert from its descriptor; no retraining. ``DescriptorError`` when the
        descriptor is of another space than the artifact's keys."""
        check_descriptor(self.descriptor_spec, descriptor, f"descriptor of {name}")
        self.add_vector(name, np.asarray(descriptor.vector, dtype=np.float32))

    def add_vector(self, name: str, vector: np.ndarray) -> None:
        """``add_expert`` on a bare vector (evaluation, accuracy fingerprints): the caller vouches
        for its space."""
        self.index.add(name, self.key_for_descriptor(vector))

    def remove_expert(self, name: str) -> None:
        self.index.remove(name)

    def rank(self, prompt: str, candidates: Sequence[Candidate], tradeoff: float) -> Ranking:
        """Every candidate once, best first (see the module docstring for the rule and trade-off)."""
        # one index snapshot decides both who is known and the similarities (experts may be
        # added or removed concurrently)
        sim_of: dict[str, float] = {}
        if any(c.expert is not None for c in candidates):
            sim_of = self.index.similarity_map(self.query_vector(prompt))
        is_known = [c.expert is not None and c.expert in sim_of for c in candidates]
        known = [c for c, k in zip(candidates, is_known, strict=True) if k]
        unknown = sorted(
            (c for c, k in zip(candidates, is_known, strict=True) if not k), key=lambda c: (c.cost, c.name)
        )
        order: list[Scored] = []
        if known:
            sims = np.array([sim_of[c.expert] for c in known if c.expert is not None])
            cost_norm = normalise_costs(np.array([c.cost for c in known]))
            t = min(max(tradeoff, 0.0), 1.0)
            lam = self.lam(t)
            if t >= 1.0:  # cheapest outright; the score is the (negated) normalised cost
                idx = np.lexsort((np.arange(len(known)), -sims, cost_norm))
                scores = -cost_norm
            else:
                idx = rank(sims, cost_norm, np.ones(len(known), dtype=bool), lam, self.top_k)
                scores = rule_scores(sims, cost_norm, lam)
            order = [Scored(known[i].name, float(scores[i]), float(sims[i]), known[i].cost) for i in idx]
        floor = min((s.score for s in order), default=0.0) - 1.0
        order += [Scored(c.name, floor - i, None, c.cost) for i, c in enumerate(unknown)]
        return Ranking(order=tuple(order), policy=self.name)


def bundled_artifact_path() -> Path:
    """The bundled CSCR artifact (``load_router()``'s default; descriptor-keyed, perplexity fingerprints)."""
    return artifacts_dir() / "routerbench"


DEFAULT_ARTIFACT = "default-kernel-shrink"


def default_artifact_path() -> Path:
    """What the gateway serves for ``router.artifact: bundled`` (``load_routing_policy()``'s default):
    the kernel-shrink router fitted on RouterBench and AlpacaEval chat prompts (docs/ROUTER.md)."""
    return artifacts_dir() / DEFAULT_ARTIFACT


def load_router(path: Path | None = None, top_k: int | None = None) -> CSCRRouter:
    """Load a CSCR router artifact (None: the bundled RouterBench one) and its encoder.

    The bundled artifact's static encoder ships distilled inside the package, so loading takes
    about a second and needs no torch; an encoder that does not ship (``minilm-onnx``, ...) is
    built on first use into ``cache_dir()``. Artifacts of other variants: ``load_routing_policy``.
    """
    src = bundled_artifact_path() if path is None else Path(path)
    artifact = RouterArtifact.load(src)
    if artifact.config.variant != "cscr":
        raise ValueError(f"router artifact variant {artifact.config.variant!r} is not CSCR; use load_routing_policy")
    return CSCRRouter(artifact, top_k=top_k, source=src)


def load_routing_policy(path: Path | None = None, top_k: int | None = None) -> RoutingPolicy:
    """Load any router artifact (None: ``default_artifact_path()``) as a ``RoutingPolicy``, dispatching
    on ``config.json``'s ``variant``.

    ``"cscr"`` is ``load_router``. Any other variant names its loader in ``config.json`` as
    ``"loader": "router_core.<module>:<function>"``, a function ``(path: Path, top_k: int | None)
    -> RoutingPolicy``; only ``router_core`` modules are imported, so an artifact cannot make the
    gateway import arbitrary code.
    """
    import importlib
    import json

    src = default_artifact_path() if path is None else Path(path)
    raw = json.loads((src / "config.json").read_text())
    variant = raw.get("variant", "cscr")
    if variant == "cscr":
        return load_router(src, top_k)
    loader = raw.get("loader")
    if not isinstance(loader, str) or not loader.startswith("router_core.") or ":" not in loader:
        raise ValueError(
            f"router artifact {src}: variant {variant!r} needs a 'loader' of the form 'router_core.<module>:<fn>'"
        )
    module, fn = loader.split(":", 1)
    policy: RoutingPolicy = getattr(importlib.import_module(module), fn)(src, top_k)
    return policy
