"""Our research variant: a descriptor-keyed kernel router ("kernel-shrink").

What it reads, what it knows, and how it combines them:

- **Reads** the routing text of the prompt (``encoder.routing_text``: head + last question, not the
  shared few-shot prefix), embedded by a frozen encoder, and the prompt's length (known before the
  call, it drives the input cost).
- **Knows** each model only through its *descriptor*: the model's graded answers on a fixed set of
  labelled prompts (the probe set; in-distribution, the training prompts) and its price. A new
  model needs only its answers on the probe prompts: no retraining.
- **Combines** them as a hierarchical (empirical-Bayes) estimate of each model's chance of being
  right on this prompt:

      p̂_j(x) = (Σ_i w_i(x) y_ij + m · π_j(x)) / (Σ_i w_i(x) + m)
      π_j(x)  = (W(x) · a_j(cluster(x)) + m_g · ā_j) / (W(x) + m_g),   W(x) = Σ_i w_i(x)
      a_j(c)  = (Σ_{i∈c} y_ij + m_c · ā_j) / (n_c + m_c)

  with w_i(x) = exp((s_i − 1)/h) over the k most similar probe prompts (cosine s_i, FAISS),
  a_j(c) the model's accuracy in the prompt's K-means cluster shrunk toward its overall accuracy
  ā_j. The prior π_j(x) is distance-aware (``fallback_strength`` m_g > 0): the cluster estimate
  weighs as much as the kernel's mass W(x), so a prompt unlike every training prompt (little mass)
  falls back to the model's overall accuracy instead of the accuracy of whichever cluster happens
  to be nearest, usually one of another task (docs/EVALUATION.md, "Out of distribution"). With
  m_g = 0, π_j(x) = a_j(cluster(x)), the recipe before. Written out, p̂_j(x) is an inner product
  between a query vector (the normalised kernel weights over probe prompts, plus the cluster
  indicator) and the model's key (its probe answers and cluster accuracies): the CSCR shape,
  score = ⟨query, key_j⟩, searched with FAISS.

- **Costs** per prompt: ĉ_ij = a_j + b_j · len(prompt), least squares per model on the training
  prompts (input cost scales with length; output cost is the model's typical answer).

The route is the shared rule argmax_j p̂_ij − λ·ĉ_ij. Hyperparameters (k, h, m, m_g) are chosen by
K-fold cross-validation on the training prompts only (AUDC on the held-out folds), never on test.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import numpy as np

from router_core.baselines import LAMBDAS, cluster_means, kmeans, label_groups, model_accuracy, sweep
from router_core.metrics import cost_grid, curve_points, curve_stats

logger = logging.getLogger(__name__)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def similarities(emb: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """(N, R) cosine of each query to each probe prompt: unit float32 queries against the unit float32
    ``keys`` (``KernelShrinkRouter.keys``, ``NeighbourLengths.keys``). Computed once per request
    when both models search the same probe prompts (``sims=`` of their ``predict``)."""
    return _unit(np.atleast_2d(emb)).astype(np.float32) @ keys.T


@dataclass
class KernelShrinkRouter:
    """p̂ from kernel-weighted probe neighbours shrunk toward the prompt cluster's accuracy."""

    k: int = 400
    bandwidth: float = 0.1
    prior_strength: float = 2.0  # m: pseudo-prompts of the cluster estimate
    cluster_strength: float = 10.0  # m_c: pseudo-prompts of the overall accuracy in each cluster
    n_clusters: int = 20
    seed: int = 0
    name: str = "ours"
    fallback_strength: float = 0.0  # m_g: pseudo-prompts of the overall accuracy in the prior; 0 = off
    _keys: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    _labels: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    _observed: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool), repr=False)
    _centroids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    _cluster_acc: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    _overall: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # (M,) ā_j
    _keys_f32: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32), repr=False)
    # (rows, cols, labels of those cols) per group of models labelled on the same prompts
    _groups: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)
    _centroid_sq: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @classmethod
    def from_hyperparams(cls, hp: dict[str, float], seed: int = 0) -> KernelShrinkRouter:
        """A router with (k, bandwidth, prior_strength[, fallback_strength]) as :func:`select_hyperparams`
        returns them (an artifact without ``fallback_strength`` predates it: 0, off)."""
        k, h, m = int(hp["k"]), float(hp["bandwidth"]), float(hp["prior_strength"])
        g = float(hp.get("fallback_strength", 0.0))
        return cls(k=k, bandwidth=h, prior_strength=m, seed=seed, fallback_strength=g)

    def unfitted(self) -> KernelShrinkRouter:
        """A router with the same hyperparameters and nothing fitted (refits on other labels)."""
        return type(self)(k=self.k, bandwidth=self.bandwidth, prior_strength=self.prior_strength,
                          cluster_strength=self.cluster_strength, n_clusters=self.n_clusters, seed=self.seed,
                          name=self.name, fallback_strength=self.fallback_strength)

    def fit(self, emb: np.ndarray, quality: np.ndarray, observed: np.ndarray | None = None,
            centroids: np.ndarray | None = None) -> None:
        """``centroids``: the prompt clusters of an earlier fit on the same prompts (an artifact's),
        so loading or adding a model does not rerun K-means."""
        self._keys = _unit(emb)
        self._labels = quality
        self._observed = np.ones(quality.shape, dtype=bool) if observed is None else observed
        if centroids is None:
            centroids, _ = kmeans(self._keys, self.n_clusters, self.seed)
        self._centroids = np.asarray(centroids, dtype=np.float64)
        self._centroid_sq = (self._centroids**2).sum(axis=1)  # (C,)
        labels = self._nearest(self._keys)
        self._cluster_acc = cluster_means(labels, quality, self.n_clusters, self._observed, self.cluster_strength)
        self._overall = model_accuracy(quality, self._observed)
        self._keys_f32 = np.ascontiguousarray(self._keys, dtype=np.float32)
        self._groups = [(rows, cols, self._labels[:, cols]) for rows, cols in label_groups(self._observed)]

    def predict(self, emb: np.ndarray, sims: np.ndarray | None = None) -> np.ndarray:
        """(N, M) p̂; ``sims``: ``similarities(emb, self.keys)`` when the caller has them."""
        return self.combine(self.neighbours(emb, self.k, sims), self.k, self.bandwidth, self.prior_strength,
                            self.fallback_strength)

    @property
    def centroids(self) -> np.ndarray:
        return self._centroids

    @property
    def keys(self) -> np.ndarray:
        """(R, D) float32 unit rows: the probe prompts the neighbours are searched among."""
        return self._keys_f32

    def _nearest(self, q: np.ndarray) -> np.ndarray:
        return (self._centroid_sq[None, :] - 2.0 * (q @ self._centroids.T)).argmin(axis=1)  # (N,) nearest, Euclidean

    def neighbours(self, emb: np.ndarray, k: int, sims: np.ndarray | None = None) -> Neighbours:
        """The search part: nearest cluster and the k most similar labelled prompts per label group.

        One exact similarity pass over every probe prompt (``sims``, when the caller has already made
        it: ``similarities(emb, self.keys)``); per group of models, a partial sort of the prompts where
        they are labelled. The same code serves one gateway request and a batch row by row, so
        evaluation and serving cannot disagree on neighbours."""
        q = _unit(emb).astype(np.float32)
        sims_all = q @ self._keys_f32.T if sims is None else sims  # (N, R)
        found = []
        at = np.arange(sims_all.shape[0])[:, None]  # (N, 1): row-wise gathers (take_along_axis, less overhead)
        for rows, cols, labels in self._groups:
            s_g = sims_all if rows.size == sims_all.shape[1] else sims_all[:, rows]  # (N, R_g)
            kk = min(k, rows.size)
            part = np.argpartition(-s_g, kk - 1, axis=1)[:, :kk] if kk < rows.size else \
                np.broadcast_to(np.arange(rows.size), s_g.shape)  # (N, kk) the kk most similar, unordered
            part_sims = s_g[at, part]
            o = np.argsort(-part_sims, axis=1, kind="stable")  # best first: ``combine`` may use a prefix
            idx = rows[part[at, o]]  # (N, kk) probe-prompt indices
            sims = part_sims[at, o].astype(np.float64)
            found.append((cols, sims, labels[idx]))  # labels (N, kk, m)
        return Neighbours(self._cluster_acc[self._nearest(q)], found, self._overall)

    @staticmethod
    def combine(nb: Neighbours, k: int, bandwidth: float, prior_strength: float,
                fallback_strength: float = 0.0) -> np.ndarray:
        """p̂ (N, M) from neighbours: kernel-weighted labels plus ``prior_strength`` pseudo-prompts at
        the prior. Only the first ``k`` neighbours are used. The prior is the cluster estimate, or with
        ``fallback_strength`` m_g > 0 the cluster estimate and the overall accuracy weighted W : m_g,
        W the kernel mass (module docstring)."""
        out = np.zeros_like(nb.prior)
        for cols, sims, y in nb.groups:
            # absolute similarity: a prompt with no close neighbour keeps little kernel mass and falls back
            # to its prior (weights relative to the best neighbour lost 0.028 AUDC out of domain)
            w = np.exp((sims[:, :k] - 1.0) / bandwidth)  # (N, k), an identical prompt weighs 1
            mass = w.sum(axis=1, keepdims=True)  # (N, 1)
            prior = nb.prior[:, cols]  # (N, m)
            if fallback_strength > 0:  # far from every probe prompt, its nearest cluster says no more
                prior = (mass * prior + fallback_strength * nb.overall[None, cols]) / (mass + fallback_strength)
            num = np.einsum("nk,nkm->nm", w, y[:, :k]) + prior_strength * prior
            out[:, cols] = num / (mass + prior_strength)
        return out


@dataclass(frozen=True)
class Neighbours:
    prior: np.ndarray  # (N, M) cluster estimate a_j(cluster(x))
    groups: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (model cols, sims (N, k), labels (N, k, m))
    overall: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (M,) overall accuracy ā_j


@dataclass
class LengthCostModel:
    """ĉ_ij = a_j + b_j · len(prompt_i) in USD, least squares per model; floored at 10% of the mean."""

    coef: np.ndarray = field(default_factory=lambda: np.zeros((2, 0)))
    floor: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def fit(self, lengths: np.ndarray, cost: np.ndarray) -> LengthCostModel:
        x = np.stack([np.ones_like(lengths, dtype=np.float64), lengths.astype(np.float64)], axis=1)
        self.coef = np.linalg.lstsq(x, cost, rcond=None)[0]  # (2, M)
        self.floor = 0.1 * cost.mean(axis=0)
        return self

    def predict(self, lengths: np.ndarray) -> np.ndarray:
        x = np.stack([np.ones_like(lengths, dtype=np.float64), lengths.astype(np.float64)], axis=1)
        return np.maximum(x @ self.coef, self.floor)  # (N, M)


@dataclass
class NeighbourLengths:
    """Each model's expected answer length for a prompt from what it answered similar prompts.

    t̂_j(x) = (Σ_i w_i t_ij + m · t̄_j) / (Σ_i w_i + m) over the ``k`` most similar training prompts
    where model j's answer length t_ij was recorded, w_i = exp((s_i − s_max)/h) (cosine s_i, relative
    to the nearest: a chat prompt far from every probe still takes its nearest prompts' lengths), shrunk
    by m pseudo-prompts toward the model's mean length t̄_j. The arithmetic mean is the expected
    length, what an expected cost needs (a geometric mean was measured: a neighbourhood mixing
    one-letter and 400-token answers came out at ~20 tokens, 0.5–0.9 median relative cost error on
    chat). Why at all: chat answers vary 10x between prompts and models, so a constant output bound
    misprices the output side of a request. NaN for a model with no recorded length (a model added
    by descriptor): the caller fills it."""

    k: int = 10
    bandwidth: float = 0.1
    prior_strength: float = 0.01
    _keys: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32), repr=False)
    _tokens: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    _prior: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    _seen: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool), repr=False)
    _filled: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)  # NaN -> 0

    def fit(self, emb: np.ndarray, tokens: np.ndarray, keys: np.ndarray | None = None) -> NeighbourLengths:
        """``keys``: ``emb``'s unit float32 rows when the caller already has them (a router fitted on the
        same embeddings, ``KernelShrinkRouter.keys``): shared, not a second 4 MB copy."""
        self._keys = np.ascontiguousarray(_unit(emb), dtype=np.float32) if keys is None else keys
        self._tokens = np.asarray(tokens, dtype=np.float64)  # NaN: not recorded
        seen = np.isfinite(self._tokens)
        self._prior = np.array([self._tokens[seen[:, j], j].mean() if seen[:, j].any() else np.nan
                                for j in range(self._tokens.shape[1])])
        self._seen, self._filled = seen, np.where(seen, self._tokens, 0.0)  # per request: gathers, not masks
        return self

    @property
    def keys(self) -> np.ndarray:
        """(R, D) float32 unit rows: the training prompts whose answer lengths are averaged."""
        return self._keys

    def predict(self, emb: np.ndarray, sims: np.ndarray | None = None) -> np.ndarray:
        """(N, M) expected output tokens; ``sims``: ``similarities(emb, self.keys)`` when the caller has them."""
        if sims is None:
            sims = similarities(emb, self._keys)  # (N, R)
        kk = min(self.k, sims.shape[1])
        idx = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]  # (N, kk)
        s = sims[np.arange(sims.shape[0])[:, None], idx].astype(np.float64)
        w = np.exp((s - s.max(axis=1, keepdims=True)) / self.bandwidth)
        w3 = np.where(self._seen[idx], w[:, :, None], 0.0)  # (N, kk, M)
        num = (w3 * self._filled[idx]).sum(axis=1) + self.prior_strength * self._prior[None, :]
        return num / (w3.sum(axis=1) + self.prior_strength)


LENGTH_GRID = {"k": (5, 10, 20, 50), "bandwidth": (0.05, 0.1, 0.2), "prior_strength": (0.01, 0.5)}


def select_length_params(emb: np.ndarray, tokens: np.ndarray, folds: int = 4, seed: int = 0) -> dict[str, float]:
    """(k, bandwidth, prior_strength) of ``NeighbourLengths`` with the smallest held-out-fold mean
    absolute error in tokens (over every recorded answer; long answers weigh as they do in a bill)
    on the training prompts."""
    fold = random_folds(emb.shape[0], folds, seed)
    errors: dict[tuple[float, ...], list[float]] = {}
    for f in range(folds):
        tr, va = fold != f, fold == f
        for k, h, m in itertools.product(LENGTH_GRID["k"], LENGTH_GRID["bandwidth"], LENGTH_GRID["prior_strength"]):
            model = NeighbourLengths(k=int(k), bandwidth=h, prior_strength=m).fit(emb[tr], tokens[tr])
            errors.setdefault((k, h, m), []).append(float(np.nanmean(np.abs(model.predict(emb[va]) - tokens[va]))))
    best = min(errors, key=lambda key: float(np.mean(errors[key])))
    return {"k": best[0], "bandwidth": best[1], "prior_strength": best[2]}


def random_folds(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """(n,) fold index of each row: a seeded permutation dealt round-robin, so folds differ by ≤ 1 row."""
    return np.random.default_rng(seed).permutation(n) % folds


GRID = {"k": (100, 400), "bandwidth": (0.05, 0.1, 0.2), "prior_strength": (0.5, 2.0, 5.0, 20.0, 50.0)}
# m_g of the distance-aware prior when it is on; in domain the kernel mass dwarfs it, so CV barely
# tells these apart, and none of them is 0: CV cannot see the prompts it protects (docs/EVALUATION.md)
FALLBACK_GRID = (0.1, 1.0, 5.0)


def select_hyperparams(
    emb: np.ndarray,
    quality: np.ndarray,
    cost: np.ndarray,
    lengths: np.ndarray,
    observed: np.ndarray | None = None,
    folds: int = 4,
    seed: int = 0,
    groups: np.ndarray | None = None,
    fallback: bool = True,
) -> dict[str, float]:
    """(k, bandwidth, prior_strength, fallback_strength) maximising mean held-out-fold AUDC on the
    training prompts.

    With ``groups`` (e.g. the subject of each prompt; at least two), folds hold out whole groups: the
    choice is then made for prompts unlike any training prompt, which is what an out-of-distribution
    test asks of the router. Otherwise folds are random. ``fallback``: the distance-aware prior
    (``KernelShrinkRouter.fallback_strength`` from ``FALLBACK_GRID``); off: fallback_strength 0.
    """
    n = emb.shape[0]
    if groups is None or len(np.unique(groups)) < 2:
        fold = random_folds(n, folds, seed)
    else:
        names = np.unique(groups)
        order = np.random.default_rng(seed).permutation(len(names)) % folds
        fold = order[np.searchsorted(names, groups)]
    obs = np.ones(quality.shape, dtype=bool) if observed is None else observed
    # score on rows where every model is labelled (the probe rows in the unseen-models split)
    full = obs.all(axis=1)
    scores: dict[tuple[float, ...], list[float]] = {}
    for f in range(folds):
        tr, va = fold != f, (fold == f) & full
        if va.sum() < 20:
            continue
        cm = LengthCostModel().fit(lengths[tr], cost[tr])
        c_hat = cm.predict(lengths[va])
        grid = cost_grid(quality[va], cost[va])
        r = KernelShrinkRouter(seed=seed)
        r.fit(emb[tr], quality[tr], obs[tr])
        nb = r.neighbours(emb[va], int(max(GRID["k"])))  # one search per fold, sliced per k
        for k, h, m, g in itertools.product(GRID["k"], GRID["bandwidth"], GRID["prior_strength"],
                                            FALLBACK_GRID if fallback else (0.0,)):
            p_hat = r.combine(nb, int(k), h, m, g)
            ch = sweep(p_hat, c_hat, LAMBDAS)
            s = curve_stats(*curve_points(ch, quality[va], cost[va]), grid)
            scores.setdefault((k, h, m, g), []).append(s.audc)
    if not scores:  # too few fully labelled rows to validate on: the defaults
        logger.warning("kernel-shrink CV: too few labelled rows, using defaults")
        d = KernelShrinkRouter()
        hp = {"k": d.k, "bandwidth": d.bandwidth, "prior_strength": d.prior_strength}
        return {**hp, "fallback_strength": FALLBACK_GRID[1]} if fallback else hp
    best = max(scores, key=lambda key: float(np.mean(scores[key])))
    logger.info("kernel-shrink CV: best %s AUDC %.4f", best, np.mean(scores[best]))
    hp = {"k": best[0], "bandwidth": best[1], "prior_strength": best[2]}
    return {**hp, "fallback_strength": best[3]} if fallback else hp
