"""The routing contract between the gateway and the router. Imports nothing internal.

The gateway hands a router the prompt text and the providers that are allowed for this request,
each with the cost the gateway estimated for it; the router returns every candidate, best first,
with the numbers that explain its place. The gateway forwards to the first and falls back in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Candidate:
    """One provider the request may go to."""

    name: str  # provider name in gateway.yaml
    expert: str | None  # expert key name in the router artifact; None: the router knows nothing of it
    cost: float  # estimated USD of this request on this provider


@dataclass(frozen=True, slots=True)
class Scored:
    """A candidate with the router's verdict."""

    name: str
    score: float  # higher is better; comparable only within one Ranking
    similarity: float | None  # query-expert similarity, None where the router has no key for it
    cost: float


@dataclass(frozen=True, slots=True)
class Ranking:
    """All candidates, best first."""

    order: tuple[Scored, ...]
    policy: str  # which policy decided, e.g. "cscr" or "cost-only"

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.order]


class RoutingPolicy(Protocol):
    """A router as the gateway sees it.

    ``tradeoff`` is in [0, 1]: 0 asks for the best expected quality whatever it costs, 1 for the
    cheapest candidate; values in between move along the router's deferral curve.
    """

    name: str

    def rank(self, prompt: str, candidates: Sequence[Candidate], tradeoff: float) -> Ranking: ...


class CostOnlyPolicy:
    """Cheapest candidate first; ties broken by name so the order is stable.

    The baseline ``auto`` policy when no trained router is loaded: it ignores the prompt and the
    trade-off entirely.
    """

    name = "cost-only"

    def rank(self, prompt: str, candidates: Sequence[Candidate], tradeoff: float) -> Ranking:
        ordered = sorted(candidates, key=lambda c: (c.cost, c.name))
        return Ranking(
            order=tuple(Scored(c.name, -c.cost, None, c.cost) for c in ordered), policy=self.name
        )
