"""Cost-spectrum InfoNCE (CSCR, arXiv 2508.12491) and plain InfoNCE, as pure functions of tensors.

As in sentence-transformers' ``losses/``, the model only produces vectors; the losses below take
plain tensors, so tests can feed hand-made ones.

Cost-spectrum InfoNCE, for one query q with unit vector ``q`` and unit expert keys ``k_j``:

- costs ``c_j`` are already normalised to [0, 1] (``router.normalise_costs``: log-cost min-max
  over the pool);
- the experts are split into K quantile bands of ``c``; band k has mean cost ``c̄_k`` and
  temperature ``τ_k = τ_min + α·c̄_k`` (cheap bands are sharper);
- every expert's logit at band k's temperature is ``(q·k_j − γ·c_j) / τ_k``: the cost penalty sits
  in the softmax denominator for every expert and, for the positives, in the numerator too, so a
  more expensive correct expert is a weaker positive (raising a positive's cost raises the loss);
- positives of band k are the correct experts of that band, weighted by their FLOAT labels
  (a soft label of 0.5 is half a positive; labels are never truncated to int);
- loss_k = −Σ_{p∈band k} y_p·log softmax_p / Σ_{p∈band k} y_p, averaged over the bands that have a
  positive, then over the queries that have any positive (queries no expert got right carry no
  contrastive signal and are skipped).

The softmax runs over ALL experts of the pool, not only the band's: each band term asks that the
query be closer to its correct experts than to every other expert, the cheaper bands with a
sharper temperature.

Plain InfoNCE (the ablation): one temperature, no bands, no cost term.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def cost_bands(costs: torch.Tensor, n_bands: int) -> torch.Tensor:
    """Quantile band of every expert: (B, M) or (M,) normalised costs -> same-shaped int64 in [0, K).

    Band edges are the (1/K, ..., (K-1)/K) quantiles of each row; an expert whose cost equals an
    edge goes to the lower band, so equal costs always share a band.
    """
    import torch

    squeeze = costs.dim() == 1
    c = costs.unsqueeze(0) if squeeze else costs  # (B, M)
    qs = torch.linspace(0, 1, n_bands + 1, dtype=c.dtype, device=c.device)[1:-1]  # (K-1,)
    edges = torch.quantile(c, qs, dim=1).T.contiguous()  # (B, K-1)
    bands = torch.searchsorted(edges, c.contiguous(), right=False)  # (B, M)
    return bands[0] if squeeze else bands


def band_temperatures(
    costs: torch.Tensor, bands: torch.Tensor, n_bands: int, tau_min: float, alpha: float
) -> torch.Tensor:
    """τ_k = τ_min + α·(mean normalised cost of band k): (B, M) costs and bands -> (B, K).

    An empty band (possible with ties) gets τ_min; it has no experts, hence no positives.
    """
    import torch

    onehot = torch.nn.functional.one_hot(bands, n_bands).to(costs.dtype)  # (B, M, K)
    count = onehot.sum(dim=1)  # (B, K)
    mean = (onehot * costs.unsqueeze(-1)).sum(dim=1) / count.clamp(min=1)  # (B, K)
    return tau_min + alpha * mean


def cscr_loss(
    queries: torch.Tensor,
    keys: torch.Tensor,
    labels: torch.Tensor,
    costs: torch.Tensor,
    n_bands: int = 5,
    gamma: float = 0.2,
    alpha: float = 0.25,
    tau_min: float = 0.05,
) -> torch.Tensor:
    """Cost-spectrum InfoNCE (see module docstring). Scalar.

    queries (B, D) and keys (M, D) unit vectors; labels (B, M) float in [0, 1]; costs (M,) or
    (B, M) normalised to [0, 1].
    """
    import torch

    b, m = labels.shape
    c = costs.expand(b, m) if costs.dim() == 1 else costs  # (B, M)
    sim = queries @ keys.T  # (B, M)
    bands = cost_bands(c, n_bands)  # (B, M)
    taus = band_temperatures(c, bands, n_bands, tau_min, alpha)  # (B, K)
    logits = (sim - gamma * c).unsqueeze(1) / taus.unsqueeze(-1)  # (B, K, M)
    logp = torch.log_softmax(logits, dim=-1)  # (B, K, M)
    in_band = torch.nn.functional.one_hot(bands, n_bands).transpose(1, 2).to(labels.dtype)  # (B, K, M)
    pos = in_band * labels.unsqueeze(1)  # (B, K, M)
    weight = pos.sum(dim=-1)  # (B, K)
    band_loss = -(pos * logp).sum(dim=-1) / weight.clamp(min=1e-12)  # (B, K)
    has_band = (weight > 0).to(labels.dtype)  # (B, K)
    n_bands_used = has_band.sum(dim=-1)  # (B,)
    per_query = (band_loss * has_band).sum(dim=-1) / n_bands_used.clamp(min=1)  # (B,)
    has_pos = (n_bands_used > 0).to(labels.dtype)
    return (per_query * has_pos).sum() / has_pos.sum().clamp(min=1)


def infonce_loss(queries: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, tau: float = 0.05) -> torch.Tensor:
    """Plain multi-positive InfoNCE (ablation): -Σ_p y_p log softmax(q·k / τ)_p / Σ_p y_p. Scalar."""
    import torch

    logp = torch.log_softmax(queries @ keys.T / tau, dim=-1)  # (B, M)
    weight = labels.sum(dim=-1)  # (B,)
    per_query = -(labels * logp).sum(dim=-1) / weight.clamp(min=1e-12)
    has_pos = (weight > 0).to(labels.dtype)
    return (per_query * has_pos).sum() / has_pos.sum().clamp(min=1)
