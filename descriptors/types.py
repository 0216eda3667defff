"""Descriptor files and errors. Imports nothing internal.

A descriptor file is JSON: ``{"vector": [...], "kind", "probe_set", "scorer", "settings", "model"}``.
The gateway reads only ``vector`` (``gateway/experts.py``); the rest says how it was made, so two
descriptors can be checked for comparability before they share an index.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("perplexity", "logit")


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` (parents created) through a temporary file and a rename, so a
    reader — another process using the same cache — never sees half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(p)


class DescriptorError(ValueError):
    """A descriptor cannot be built or read (missing model, no answers, bad file)."""


@dataclass(frozen=True)
class Descriptor:
    """One model's descriptor vector and how it was made."""

    vector: list[float]
    kind: str  # "perplexity" | "logit"
    probe_set: str  # ProbeSet.id
    scorer: str  # the LM that produced it (perplexity: the shared scorer; logit: the model itself)
    model: str
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DescriptorError(f"descriptor kind {self.kind!r}; expected one of {KINDS}")
        if not self.vector or not all(math.isfinite(v) for v in self.vector):
            raise DescriptorError(f"descriptor of {self.model}: empty or not finite")

    @property
    def dim(self) -> int:
        return len(self.vector)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        write_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Descriptor:
        raw = json.loads(Path(path).read_text())
        try:
            return cls(
                vector=[float(v) for v in raw["vector"]],
                kind=raw["kind"],
                probe_set=raw["probe_set"],
                scorer=raw["scorer"],
                model=raw["model"],
                settings=dict(raw.get("settings", {})),
            )
        except KeyError as exc:
            raise DescriptorError(f"descriptor file {path}: missing field {exc}") from exc
