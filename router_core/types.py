"""The routing contract between the gateway and the router. Imports nothing internal but the leaf
``paths`` (``write_atomic``).

The gateway hands a router the prompt text and the providers that are allowed for this request,
each with the cost the gateway estimated for it; the router returns every candidate, best first,
with the numbers that explain its place. The gateway forwards to the first and falls back in order.

A model the router was not trained on joins through its **descriptor** (``Descriptor``): a vector
made on the router's probe set, in the space its ``descriptor_spec`` names (``DescriptorSpec``:
kind, probe set, scorer, version). One reader (``Descriptor.load``) and one comparability rule
(``DescriptorSpec.incompatibility``) serve every router and the gateway.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from router_core.paths import write_atomic

DESCRIPTOR_KINDS = ("graded", "perplexity", "logit")
DESCRIPTOR_VERSION = 1  # the file layout and the meaning of the fields below


class DescriptorError(ValueError):
    """A descriptor cannot be built, read or used (missing model, bad file, another space)."""


@dataclass(frozen=True)
class DescriptorSpec:
    """The space a descriptor lives in; two descriptors are comparable when their specs agree.

    ``settings`` holds the scoring settings that change the numbers (perplexity: token windows;
    logit: the string basis); a descriptor must match every one the router's spec names.
    ``probes_file`` says where the router's probe prompts are (not part of the space)."""

    kind: str  # "graded" | "perplexity" | "logit"
    probe_set: str  # the probe set id
    scorer: str  # graded: the grader ("letter-v1"); perplexity: the scorer LM; logit: "" (the model itself)
    version: int = DESCRIPTOR_VERSION
    settings: Mapping[str, Any] = field(default_factory=dict)
    probes_file: str | None = field(default=None, compare=False)

    def incompatibility(self, got: DescriptorSpec, source: str = "descriptor") -> str | None:
        """Why a descriptor of spec ``got`` cannot join a router of this spec (None: it can). The
        reason names the source and the field."""
        for name in ("kind", "version", "probe_set") + (("scorer",) if self.kind != "logit" else ()):
            want, have = getattr(self, name), getattr(got, name)
            if want != have:
                return f"{source}: field {name!r} is {have!r}; the router needs {want!r}"
        for name, want in self.settings.items():
            have = got.settings.get(name)
            if have is not None and have != want:
                return f"{source}: field 'settings.{name}' is {have!r}; the router needs {want!r}"
        return None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], probes_file: str | None = None) -> DescriptorSpec:
        try:
            return cls(kind=str(raw["kind"]), probe_set=str(raw["probe_set"]), scorer=str(raw.get("scorer") or ""),
                       version=int(raw.get("version", DESCRIPTOR_VERSION)), settings=dict(raw.get("settings") or {}),
                       probes_file=probes_file)
        except KeyError as exc:
            raise DescriptorError(f"descriptor spec without field {exc}") from exc


@dataclass(frozen=True)
class Descriptor:
    """One model's descriptor vector and how it was made (the file: ``to_dict`` / ``load``).

    Graded descriptors hold 1 / 0 (or a fraction) per probe prompt and NaN where the model was not
    asked (written as null); the other kinds are finite everywhere."""

    vector: list[float]
    kind: str
    probe_set: str
    scorer: str
    model: str
    settings: dict[str, Any] = field(default_factory=dict)
    version: int = DESCRIPTOR_VERSION

    def __post_init__(self) -> None:
        if self.kind not in DESCRIPTOR_KINDS:
            raise DescriptorError(f"descriptor kind {self.kind!r}; expected one of {DESCRIPTOR_KINDS}")
        if self.kind == "graded":
            if not any(math.isfinite(v) for v in self.vector) or any(v < 0 or v > 1 for v in self.vector):
                raise DescriptorError(f"graded descriptor of {self.model}: no graded answer, or one outside [0, 1]")
        elif not self.vector or not all(math.isfinite(v) for v in self.vector):
            raise DescriptorError(f"descriptor of {self.model}: empty or not finite")

    @property
    def dim(self) -> int:
        return len(self.vector)

    @property
    def spec(self) -> DescriptorSpec:
        return DescriptorSpec(self.kind, self.probe_set, self.scorer, self.version, self.settings)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["vector"] = [v if math.isfinite(v) else None for v in self.vector]  # strict JSON: NaN as null
        return out

    def save(self, path: str | Path) -> None:
        write_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")  # a reader never sees half a file

    @classmethod
    def from_dict(cls, raw: Any, source: str = "descriptor") -> Descriptor:
        """The one reader of descriptor documents (files, the store). Every field is required:
        a bare vector says nothing of its space and is refused."""
        if not isinstance(raw, dict):
            raise DescriptorError(f"{source}: not a descriptor document (a bare vector has no kind / probe set)")
        try:
            vector = [math.nan if v is None else float(v) for v in raw["vector"]]
            return cls(vector=vector, kind=str(raw["kind"]), probe_set=str(raw["probe_set"]),
                       scorer=str(raw["scorer"]), model=str(raw.get("model", "")),
                       settings=dict(raw.get("settings") or {}), version=int(raw.get("version", DESCRIPTOR_VERSION)))
        except KeyError as exc:
            raise DescriptorError(f"{source}: missing field {exc}") from exc
        except (TypeError, ValueError) as exc:
            if isinstance(exc, DescriptorError):
                raise DescriptorError(f"{source}: {exc}") from exc
            raise DescriptorError(f"{source}: field 'vector' is not a list of numbers ({exc})") from exc

    @classmethod
    def load(cls, path: str | Path) -> Descriptor:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise DescriptorError(f"descriptor file {path}: {exc}") from exc
        return cls.from_dict(raw, f"descriptor file {path}")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One provider the request may go to.

    ``cost`` is the gateway's conservative estimate (its output bound); ``cost_at`` (optional) prices
    this request for an expected answer length, so a router that predicts answer lengths per model
    ranks on expected cost instead (budgets and eligibility stay on ``cost``)."""

    name: str  # provider name in gateway.yaml
    expert: str | None  # expert key name in the router artifact; None: the router knows nothing of it
    cost: float  # estimated USD of this request on this provider
    cost_at: Callable[[float], float] | None = None  # USD were each answer this many output tokens long


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
    ``blocking``: ``rank`` does enough CPU work that the gateway runs it off the event loop.
    ``descriptor_spec``: the descriptor space ``add_expert`` takes (None: it adds no experts).
    ``add_expert`` raises ``DescriptorError`` with the reason for a descriptor it cannot take.
    """

    name: str
    blocking: bool

    @property
    def descriptor_spec(self) -> DescriptorSpec | None: ...

    def rank(self, prompt: str, candidates: Sequence[Candidate], tradeoff: float) -> Ranking: ...

    def add_expert(self, name: str, descriptor: Descriptor) -> None: ...


def check_descriptor(spec: DescriptorSpec | None, descriptor: Descriptor, source: str = "descriptor") -> None:
    """``add_expert``'s guard: raise ``DescriptorError`` unless ``descriptor`` lives in ``spec``'s space."""
    if spec is None:
        raise DescriptorError("this router adds no experts from descriptors (its keys are learned)")
    why = spec.incompatibility(descriptor.spec, source)
    if why is not None:
        raise DescriptorError(why)


class CostOnlyPolicy:
    """Cheapest candidate first; ties broken by name so the order is stable.

    The baseline ``auto`` policy when no trained router is loaded: it ignores the prompt and the
    trade-off entirely.
    """

    name = "cost-only"
    blocking = False
    descriptor_spec: DescriptorSpec | None = None

    def add_expert(self, name: str, descriptor: Descriptor) -> None:
        raise DescriptorError("the cost-only policy adds no experts")

    def rank(self, prompt: str, candidates: Sequence[Candidate], tradeoff: float) -> Ranking:
        ordered = sorted(candidates, key=lambda c: (c.cost, c.name))
        return Ranking(
            order=tuple(Scored(c.name, -c.cost, None, c.cost) for c in ordered), policy=self.name
        )
