"""FAISS inner-product index over the expert keys, addressable by expert name.

Keys are unit vectors, so inner product = cosine similarity. The pool is small (tens of experts)
and changes rarely, so ``add`` / ``remove`` simply rebuild the flat index; a search stays exact.
A rebuild makes a new immutable snapshot and swaps it in with one assignment, so a search running
while the pool changes sees either the old pool or the new one, never a mix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class _Snapshot:
    names: tuple[str, ...]
    keys: np.ndarray  # (M, D) float32, C-contiguous
    pos: dict[str, int]
    index: Any  # faiss.IndexFlatIP


def _build(names: Sequence[str], keys: np.ndarray, dim: int) -> _Snapshot:
    import faiss

    keys = np.ascontiguousarray(np.asarray(keys, dtype=np.float32).reshape(len(names), dim))
    if len(set(names)) != len(names):
        raise ValueError("expert names must be unique")
    index = faiss.IndexFlatIP(dim)
    if len(names):
        index.add(keys)
    return _Snapshot(tuple(names), keys, {n: i for i, n in enumerate(names)}, index)


class ExpertIndex:
    """Named expert keys behind a ``faiss.IndexFlatIP``."""

    def __init__(self, names: Sequence[str], keys: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.float32)
        if keys.ndim != 2 or keys.shape[0] != len(names):
            raise ValueError(f"{len(names)} names but keys of shape {keys.shape}")
        self.dim = int(keys.shape[1])
        self._snap = _build(names, keys, self.dim)

    @property
    def names(self) -> list[str]:
        return list(self._snap.names)

    @property
    def keys(self) -> np.ndarray:
        return self._snap.keys.copy()

    def __len__(self) -> int:
        return len(self._snap.names)

    def __contains__(self, name: object) -> bool:
        return name in self._snap.pos

    def add(self, name: str, key: np.ndarray) -> None:
        """Add (or replace) one expert's key, then rebuild."""
        snap = self._snap
        key = np.asarray(key, dtype=np.float32).reshape(1, self.dim)
        if name in snap.pos:
            keys = snap.keys.copy()
            keys[snap.pos[name]] = key[0]
            self._snap = _build(snap.names, keys, self.dim)
        else:
            self._snap = _build([*snap.names, name], np.vstack([snap.keys, key]), self.dim)

    def remove(self, name: str) -> None:
        """Drop one expert, then rebuild. Unknown names raise ``KeyError``."""
        snap = self._snap
        i = snap.pos[name]
        names = [n for n in snap.names if n != name]
        self._snap = _build(names, np.delete(snap.keys, i, axis=0), self.dim)

    def search(self, query: np.ndarray, k: int | None = None) -> tuple[np.ndarray, list[str]]:
        """Top-``k`` experts (all if None) for one unit query: (similarities (k,), names), best first."""
        snap = self._snap
        k = len(snap.names) if k is None else min(k, len(snap.names))
        q = np.ascontiguousarray(np.asarray(query, dtype=np.float32).reshape(1, self.dim))
        sims, idx = snap.index.search(q, k)
        return sims[0], [snap.names[i] for i in idx[0]]

    def similarities(self, query: np.ndarray) -> np.ndarray:
        """Similarity of one unit query to every expert, in ``names`` order: (M,)."""
        return self._by_position(query)[0]

    def similarity_map(self, query: np.ndarray) -> dict[str, float]:
        """Expert name -> similarity for one unit query, from one consistent snapshot."""
        sims, names = self._by_position(query)
        return {n: float(s) for n, s in zip(names, sims, strict=True)}

    def _by_position(self, query: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
        snap = self._snap
        q = np.ascontiguousarray(np.asarray(query, dtype=np.float32).reshape(1, self.dim))
        sims, idx = snap.index.search(q, len(snap.names))
        out = np.empty(len(snap.names), dtype=np.float32)
        out[idx[0]] = sims[0]
        return out, snap.names
