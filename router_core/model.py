"""The trainable part of the router: a query head and the expert keys, with the config they were built from.

Query head: a 2-layer MLP over the frozen encoder's prompt embedding -> L2-normalised vector in the
shared space (``out_dim``).

Expert keys, one unit vector per model, two kinds (``RouterConfig.keys``):

- ``"learned"``: a free embedding per model, trained jointly with the head. Simple, but a model
  not seen in training has no key.
- ``"descriptor"``: key = normalise(W2·gelu(W1·d + b1) + b2) of a fixed descriptor vector ``d`` of the
  model, the map (W1, b1, W2, b2) learned with the head. A NEW model needs only its descriptor,
  no retraining. Until the descriptors package lands, the descriptor is the model's accuracy
  fingerprint over a fixed probe set (``router_core.train.accuracy_fingerprints``).

Training uses torch (``HeadModule``); inference uses the numpy forward in ``numpy_head`` /
``numpy_key_map`` so serving never imports torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RouterConfig:
    """Everything needed to rebuild and retrain a router; stored in every artifact."""

    variant: str = "cscr"  # what the artifact is; the loader dispatches on it
    encoder: str = "static-minilm"
    routing_text: str = ""  # encoder.ROUTING_TEXT_VERSION at training time
    in_dim: int = 256
    hidden: int = 256
    out_dim: int = 128
    dropout: float = 0.1
    keys: str = "descriptor"  # "learned" | "descriptor"
    descriptor_dim: int = 0
    # what the descriptor is: "accuracy" (graded answers on probe clusters, computed in training) or
    # a descriptor-file kind ("perplexity"), given to ``cscr train --descriptor-dir``
    descriptor: str = "accuracy"
    # loss (paper defaults)
    loss: str = "cscr"  # "cscr" | "infonce"
    n_bands: int = 5
    gamma: float = 0.2
    alpha: float = 0.25
    tau_min: float = 0.05
    tau: float = 0.05  # plain InfoNCE temperature
    # optimisation (paper defaults)
    lr: float = 5e-4
    weight_decay: float = 0.01
    batch_size: int = 512
    epochs: int = 10
    seed: int = 0
    # inference
    top_k: int | None = None  # None: rule over every expert (ANCHORS: k=4 cannot reach cheap models)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RouterConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"router config: unknown fields {unknown}")
        return cls(**data)


def _torch_modules(cfg: RouterConfig, n_models: int) -> torch.nn.Module:
    import torch
    from torch import nn

    class HeadModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Sequential(
                nn.Linear(cfg.in_dim, cfg.hidden),
                nn.GELU(approximate="tanh"),
                nn.Dropout(cfg.dropout),
                nn.Linear(cfg.hidden, cfg.out_dim),
            )
            if cfg.keys == "learned":
                self.key_emb = nn.Parameter(torch.randn(n_models, cfg.out_dim) * 0.1)
            elif cfg.keys == "descriptor":
                self.key_map = nn.Sequential(
                    nn.Linear(cfg.descriptor_dim, cfg.hidden),
                    nn.GELU(approximate="tanh"),
                    nn.Linear(cfg.hidden, cfg.out_dim),
                )
            else:
                raise ValueError(f"unknown keys kind {cfg.keys!r}; expected 'learned' or 'descriptor'")

        def queries(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.normalize(self.head(x), dim=-1)  # (B, out)

        def keys(self, descriptors: torch.Tensor | None) -> torch.Tensor:
            if cfg.keys == "learned":
                raw = self.key_emb
            else:
                assert descriptors is not None, "descriptor keys need descriptors"
                raw = self.key_map(descriptors)
            return nn.functional.normalize(raw, dim=-1)  # (M, out)

    return HeadModule()


def build_module(cfg: RouterConfig, n_models: int) -> torch.nn.Module:
    """The torch module trained by ``router_core.train`` (``.queries(x)``, ``.keys(descriptors)``)."""
    return _torch_modules(cfg, n_models)


def module_weights(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """State dict as float32 numpy arrays (what the artifact stores)."""
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in module.state_dict().items()}


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _gelu(x: np.ndarray) -> np.ndarray:
    """tanh-approximate GELU, the same formula as torch's ``GELU(approximate="tanh")`` used in training."""
    return (0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x**3)))).astype(np.float32)


def numpy_head(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Query vectors from encoder embeddings without torch: (N, in) or (in,) -> unit (N, out) / (out,)."""
    h = x @ weights["head.0.weight"].T + weights["head.0.bias"]
    h = _gelu(h)
    return _l2(h @ weights["head.3.weight"].T + weights["head.3.bias"])


def numpy_key_map(weights: dict[str, np.ndarray], descriptors: np.ndarray) -> np.ndarray:
    """Expert keys from descriptors without torch: (M, F) -> unit (M, out)."""
    h = _gelu(descriptors @ weights["key_map.0.weight"].T + weights["key_map.0.bias"])
    return _l2(h @ weights["key_map.2.weight"].T + weights["key_map.2.bias"])


# ---------------------------------------------------------------------------------------------
# artifact: everything a router needs at inference, plus where it came from

ARTIFACT_FORMAT = 1


@dataclass
class RouterArtifact:
    """A trained router on disk: ``config.json``, ``weights.safetensors``, ``experts.json``, ``meta.json``.

    ``weights`` holds the head (and key map or learned key embedding) as float32 arrays plus
    ``expert_keys`` (M, out) and, with descriptor keys, ``descriptors`` (M, F) and the probe
    cluster ``probe_centroids`` (C, in) used to compute a new model's fingerprint.
    """

    config: RouterConfig
    weights: dict[str, np.ndarray]
    experts: list[str]
    mean_cost: np.ndarray  # (M,) USD per call on the training prompts
    lam_max: float  # λ at trade-off 1 (see router.CSCRRouter)
    meta: dict[str, Any] = field(default_factory=dict)  # encoder/data versions, metrics, timings
    lam_table: list[float] | None = None  # λ at trade-offs linspace(0, 1, len): router.calibrate_lam_table

    @property
    def expert_keys(self) -> np.ndarray:
        return self.weights["expert_keys"]

    @property
    def descriptors(self) -> np.ndarray | None:
        return self.weights.get("descriptors")

    def save(self, path: Any) -> None:
        import json
        from pathlib import Path

        from safetensors.numpy import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        save_file(
            {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.weights.items()},
            str(out / "weights.safetensors"),
        )
        experts = {
            "format": ARTIFACT_FORMAT,
            "lam_max": self.lam_max,
            "lam_table": self.lam_table,
            "experts": [
                {"name": n, "mean_cost_usd": float(c)} for n, c in zip(self.experts, self.mean_cost, strict=True)
            ],
        }
        (out / "experts.json").write_text(json.dumps(experts, indent=2) + "\n")
        (out / "meta.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True, default=str) + "\n")

    @classmethod
    def load(cls, path: Any) -> RouterArtifact:
        import json
        from pathlib import Path

        from safetensors.numpy import load_file

        src = Path(path)
        missing = [f for f in ("config.json", "weights.safetensors", "experts.json") if not (src / f).exists()]
        if missing:
            raise FileNotFoundError(f"router artifact {src}: missing {missing}")
        config = RouterConfig.from_dict(json.loads((src / "config.json").read_text()))
        experts = json.loads((src / "experts.json").read_text())
        if experts.get("format") != ARTIFACT_FORMAT:
            raise ValueError(f"router artifact {src}: format {experts.get('format')} != {ARTIFACT_FORMAT}")
        meta_path = src / "meta.json"
        return cls(
            config=config,
            weights=dict(load_file(str(src / "weights.safetensors"))),
            experts=[e["name"] for e in experts["experts"]],
            mean_cost=np.array([e["mean_cost_usd"] for e in experts["experts"]], dtype=np.float64),
            lam_max=float(experts["lam_max"]),
            lam_table=experts.get("lam_table"),
            meta=json.loads(meta_path.read_text()) if meta_path.exists() else {},
        )
