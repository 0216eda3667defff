"""FAISS inner-product index over the expert keys, addressable by expert name.

Keys are unit vectors, so inner product = cosine similarity. The pool is small (tens of experts)
and changes rarely, so ``add`` / ``remove`` simply rebuild the flat index; a search stays exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class ExpertIndex:
    """Named expert keys behind a ``faiss.IndexFlatIP``."""

    def __init__(self, names: Sequence[str], keys: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.float32)
        if keys.ndim != 2 or keys.shape[0] != len(names):
            raise ValueError(f"{len(names)} names but keys of shape {keys.shape}")
        if len(set(names)) != len(names):
            raise ValueError("expert names must be unique")
        self.dim = int(keys.shape[1])
        self._names: list[str] = list(names)
        self._keys = np.ascontiguousarray(keys)
        self._index: Any = None
        self._rebuild()

    @property
    def names(self) -> list[str]:
        return list(self._names)

    @property
    def keys(self) -> np.ndarray:
        return self._keys.copy()

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def _rebuild(self) -> None:
        import faiss

        index = faiss.IndexFlatIP(self.dim)
        if len(self._names):
            index.add(self._keys)
        self._index = index
        self._pos = {n: i for i, n in enumerate(self._names)}

    def add(self, name: str, key: np.ndarray) -> None:
        """Add (or replace) one expert's key, then rebuild."""
        key = np.asarray(key, dtype=np.float32).reshape(1, self.dim)
        if name in self._pos:
            self._keys[self._pos[name]] = key[0]
        else:
            self._names.append(name)
            self._keys = np.ascontiguousarray(np.vstack([self._keys, key]))
        self._rebuild()

    def remove(self, name: str) -> None:
        """Drop one expert, then rebuild. Unknown names raise ``KeyError``."""
        i = self._pos[name]
        del self._names[i]
        self._keys = np.ascontiguousarray(np.delete(self._keys, i, axis=0))
        self._rebuild()

    def search(self, query: np.ndarray, k: int | None = None) -> tuple[np.ndarray, list[str]]:
        """Top-``k`` experts (all if None) for one unit query: (similarities (k,), names), best first."""
        k = len(self._names) if k is None else min(k, len(self._names))
        q = np.ascontiguousarray(np.asarray(query, dtype=np.float32).reshape(1, self.dim))
        sims, idx = self._index.search(q, k)
        return sims[0], [self._names[i] for i in idx[0]]

    def similarities(self, query: np.ndarray) -> np.ndarray:
        """Similarity of one unit query to every expert, in ``names`` order: (M,)."""
        sims, names = self.search(query)
        out = np.empty(len(self._names), dtype=np.float32)
        for s, n in zip(sims, names, strict=True):
            out[self._pos[n]] = s
        return out
