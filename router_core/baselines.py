"""Reference routers for the evaluation: oracle, random, single models, k-NN, K-means (UniRoute-style).

Every learned router here is a *quality predictor*: ``fit`` on the training prompts' embeddings
and labels, ``predict`` -> p̂ (N, M), the predicted chance that each model answers each prompt
correctly. One shared rule turns p̂ into decisions for every router, so routers differ only in
p̂: for each λ of a fixed sweep, model = argmax_j (p̂_ij − λ · ĉ_j), with ĉ_j the model's mean
cost on the training prompts divided by the largest such mean (so λ is unit-free), ties to the
cheaper model. See :func:`sweep`.

``observed`` (N, M) bool marks the training labels a router may use. In-distribution every label
is observed; in the unseen-models split a held-out model is observed only on the probe prompts
(its descriptor: its answers on a fixed probe set), so every router here knows a new model only
through its descriptor and nothing is retrained for it.

Oracle, random and single models do not predict; they produce decisions directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# λ sweep shared by every p̂-router: 0, then 160 geometric steps. ĉ is normalised to max 1 and
# the cheapest models sit 10^-2..10^-4 below the dearest, so λ up to 10^4 reaches the cheapest one.
LAMBDAS = np.concatenate([[0.0], np.geomspace(1e-3, 1e4, 160)])


class QualityRouter(Protocol):
    """A router as the evaluation sees it."""

    name: str

    def fit(self, emb: np.ndarray, quality: np.ndarray, observed: np.ndarray | None = None) -> None: ...

    def predict(self, emb: np.ndarray) -> np.ndarray: ...


def sweep(p_hat: np.ndarray, model_cost: np.ndarray, lambdas: np.ndarray = LAMBDAS) -> np.ndarray:
    """Decisions (L, N): argmax_j p̂_ij − λ·ĉ_j per λ, ties to the cheaper model.

    p_hat: (N, M); model_cost: (M,) or (N, M) cost estimates in USD (normalised here).
    """
    c = np.broadcast_to(model_cost, p_hat.shape) / np.max(model_cost)  # (N, M) in (0, 1]
    tie = 1e-9 * c  # tiny: only breaks exact ties
    return np.stack([np.argmax(p_hat - lam * c - tie, axis=1) for lam in lambdas])


def oracle_choices(quality: np.ndarray, cost: np.ndarray, lambdas: np.ndarray = LAMBDAS) -> np.ndarray:
    """The oracle: the same rule on the *true* labels and the true per-prompt costs.

    At λ -> 0+ it is the cheapest correct model of each prompt (the cheapest model where none is
    correct); as λ grows it trades correct answers for cheaper ones. Its points upper-bound what a
    λ-rule router can reach at each cost.
    """
    return sweep(quality, cost, np.concatenate([[1e-9], lambdas[1:]]))


def single_choices(n: int, model: int) -> np.ndarray:
    return np.full((1, n), model, dtype=np.int64)


def random_choices(n: int, model_cost: np.ndarray, seed: int = 0) -> np.ndarray:
    """Prompt-blind, cost-aware random: level k routes each prompt to a uniformly random model among
    the k cheapest (by training mean cost), k = 1..M; (M, N)."""
    rng = np.random.default_rng(seed)
    order = np.argsort(model_cost)
    return np.stack([order[rng.integers(0, k, n)] for k in range(1, len(order) + 1)])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def topk_cosine(query: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k (FAISS IndexFlatIP): (sims (N, k), idx (N, k)), best first."""
    import faiss

    index = faiss.IndexFlatIP(keys.shape[1])
    index.add(np.ascontiguousarray(keys, dtype=np.float32))
    sims, idx = index.search(np.ascontiguousarray(query, dtype=np.float32), min(k, keys.shape[0]))
    return sims, idx


@dataclass
class KNNRouter:
    """p̂_ij = mean correctness of model j on the k nearest training prompts (cosine)."""

    k: int = 20
    name: str = "knn"
    _keys: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    _labels: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)

    _observed: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool), repr=False)

    def fit(self, emb: np.ndarray, quality: np.ndarray, observed: np.ndarray | None = None) -> None:
        self._keys, self._labels = _unit(emb), quality
        self._observed = np.ones(quality.shape, dtype=bool) if observed is None else observed

    def predict(self, emb: np.ndarray) -> np.ndarray:
        out = np.zeros((emb.shape[0], self._labels.shape[1]))
        for rows, cols in label_groups(self._observed):  # models labelled on the same prompts
            _, idx = topk_cosine(_unit(emb), self._keys[rows], self.k)
            out[:, cols] = self._labels[rows][:, cols][idx].mean(axis=1)  # (N, k, m) -> (N, m)
        return out


@dataclass
class KMeansRouter:
    """UniRoute / UMR-style: K-means (K=20) on training embeddings; p̂ = per-cluster accuracy of each
    model; a prompt takes its nearest centroid's row."""

    n_clusters: int = 20
    seed: int = 0
    name: str = "kmeans"
    _centroids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    _acc: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)

    def fit(self, emb: np.ndarray, quality: np.ndarray, observed: np.ndarray | None = None) -> None:
        self._centroids, labels = kmeans(_unit(emb), self.n_clusters, self.seed)
        self._acc = cluster_means(labels, quality, self.n_clusters, observed)

    def predict(self, emb: np.ndarray) -> np.ndarray:
        d = ((_unit(emb)[:, None, :] - self._centroids[None]) ** 2).sum(-1)  # (N, K)
        return self._acc[d.argmin(axis=1)]


def kmeans(x: np.ndarray, k: int, seed: int = 0, n_init: int = 4, iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean K-means (k-means++ seeding, Lloyd, best of ``n_init``): (centroids (k, D), labels (N,))."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float64)
    sq = (x**2).sum(axis=1)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(n_init):
        cent = x[[rng.integers(len(x))]]
        for _j in range(1, k):  # k-means++: next centre with probability ∝ squared distance
            d2 = np.maximum(sq[:, None] - 2 * x @ cent.T + (cent**2).sum(1)[None], 0).min(axis=1)
            p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1 / len(x))
            cent = np.vstack([cent, x[rng.choice(len(x), p=p)]])
        labels = np.zeros(len(x), dtype=np.int64)
        for it in range(iters):
            d2 = sq[:, None] - 2 * x @ cent.T + (cent**2).sum(1)[None]  # (N, k)
            new_labels = d2.argmin(axis=1)
            if it > 0 and (new_labels == labels).all():
                break
            labels = new_labels
            for j in range(k):
                members = labels == j
                if members.any():
                    cent[j] = x[members].mean(axis=0)
        inertia = float(np.maximum(sq - 2 * (x * cent[labels]).sum(1) + (cent[labels] ** 2).sum(1), 0).sum())
        if best is None or inertia < best[0]:
            best = (inertia, cent.copy(), labels.copy())
    assert best is not None
    return best[1], best[2]


def cluster_means(
    labels: np.ndarray,
    quality: np.ndarray,
    k: int,
    observed: np.ndarray | None = None,
    strength: float = 0.0,
) -> np.ndarray:
    """(K, M) per-cluster mean of the observed labels, shrunk toward each model's overall observed
    mean with ``strength`` pseudo-prompts; an empty cell falls back to that overall mean."""
    obs = np.ones(quality.shape, dtype=bool) if observed is None else observed
    onehot = np.eye(k)[labels]  # (N, K)
    counts = onehot.T @ obs  # (K, M)
    sums = onehot.T @ np.where(obs, quality, 0.0)  # (K, M)
    overall = model_accuracy(quality, obs)  # (M,)
    denom = counts + strength
    return np.where(denom > 0, (sums + strength * overall) / np.maximum(denom, 1e-12), overall)


def label_groups(observed: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Models sharing one pattern of observed prompts: [(row indices, model indices)]."""
    groups: dict[bytes, list[int]] = {}
    for j in range(observed.shape[1]):
        groups.setdefault(np.packbits(observed[:, j]).tobytes(), []).append(j)
    return [(np.flatnonzero(observed[:, cols[0]]), np.array(cols)) for cols in groups.values()]


def model_accuracy(quality: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """(M,) each model's mean label over the prompts where it has one (0 for a model with none)."""
    return np.where(observed, quality, 0.0).sum(axis=0) / np.maximum(observed.sum(axis=0), 1)


def model_costs(cost: np.ndarray) -> np.ndarray:
    """ĉ_j: mean training cost per model (M,) — what a router knows of prices before a call."""
    return cost.mean(axis=0)


def names_of(routers: Sequence[QualityRouter]) -> list[str]:
    return [r.name for r in routers]
