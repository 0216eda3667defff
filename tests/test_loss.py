"""Cost-spectrum InfoNCE on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from router_core.loss import band_temperatures, cost_bands, cscr_loss, infonce_loss


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def test_bands_are_cost_quantiles() -> None:
    costs = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0])
    bands = cost_bands(costs, 5)
    assert bands.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    # bands are monotone in cost, rows are independent
    two = cost_bands(torch.stack([costs, costs.flip(0)]), 5)
    assert two[1].tolist() == bands.flip(0).tolist()


def test_equal_costs_share_a_band() -> None:
    bands = cost_bands(torch.tensor([0.0, 0.5, 0.5, 0.5, 1.0]), 3)
    assert bands[1] == bands[2] == bands[3]


def test_band_temperature_is_tau_min_plus_alpha_mean_cost() -> None:
    costs = torch.tensor([[0.0, 0.2, 0.6, 1.0]])
    bands = torch.tensor([[0, 0, 1, 1]])
    taus = band_temperatures(costs, bands, 2, tau_min=0.05, alpha=0.25)
    assert taus[0].tolist() == pytest.approx([0.05 + 0.25 * 0.1, 0.05 + 0.25 * 0.8])


def test_single_band_no_cost_equals_infonce() -> None:
    torch.manual_seed(0)
    q, k = _unit(torch.randn(6, 8)), _unit(torch.randn(4, 8))
    y = torch.tensor([[1.0, 0, 0, 1]] * 6)
    c = torch.zeros(4)
    a = cscr_loss(q, k, y, c, n_bands=1, gamma=0.0, alpha=0.0, tau_min=0.1)
    b = infonce_loss(q, k, y, tau=0.1)
    assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_hand_computed_value() -> None:
    q = torch.tensor([[0.6, 0.8]])
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[1.0, 0.0]])
    c = torch.tensor([0.0, 1.0])  # 2 bands: expert 0 alone in band 0, whose mean cost is 0
    loss = cscr_loss(q, k, y, c, n_bands=2, gamma=0.2, alpha=0.25, tau_min=0.05)
    # band 0, τ=0.05: logits (0.6 - 0)/τ = 12 and (0.8 - 0.2)/τ = 12 -> p = 1/2
    assert float(loss) == pytest.approx(math.log(2), rel=1e-5)
    # without the cost penalty the dear wrong expert wins: logits 12 vs 16
    loss0 = cscr_loss(q, k, y, c, n_bands=2, gamma=0.0, alpha=0.25, tau_min=0.05)
    assert float(loss0) == pytest.approx(math.log(1 + math.exp(4)), rel=1e-5)


def test_raising_a_positive_cost_raises_the_loss() -> None:
    torch.manual_seed(1)
    q, k = _unit(torch.randn(3, 8)), _unit(torch.randn(5, 8))
    y = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]] * 3)
    cheap = torch.tensor([0.0, 0.3, 0.5, 0.7, 1.0])
    dear = cheap.clone()
    dear[1] = 0.45  # same band (the quantile edges move little), higher cost
    assert cost_bands(cheap, 5)[1] == cost_bands(dear, 5)[1]
    # α=0 isolates the γ·c penalty (with α>0 the band's temperature rises too, softening it)
    assert float(cscr_loss(q, k, y, dear, alpha=0.0)) > float(cscr_loss(q, k, y, cheap, alpha=0.0))
    # and a dearer NEGATIVE lowers the loss: it is penalised in the denominator
    neg = cheap.clone()
    neg[3] = 0.75
    assert float(cscr_loss(q, k, y, neg, alpha=0.0)) < float(cscr_loss(q, k, y, cheap, alpha=0.0))


def test_float_labels_are_not_truncated() -> None:
    torch.manual_seed(2)
    q, k = _unit(torch.randn(4, 8)), _unit(torch.randn(3, 8))
    c = torch.tensor([0.0, 0.5, 1.0])
    soft = torch.tensor([[0.5, 0.0, 0.0]] * 4)
    hard = torch.tensor([[1.0, 0.0, 0.0]] * 4)
    none = torch.zeros(4, 3)
    # a single soft positive is still a positive (int() would have made it 0: no signal at all)
    assert float(cscr_loss(q, k, soft, c)) == pytest.approx(float(cscr_loss(q, k, hard, c)))
    assert float(cscr_loss(q, k, none, c)) == 0.0
    # weights matter when a band has two positives of different label values
    c2 = torch.tensor([0.0, 0.0, 1.0])
    a = cscr_loss(q, k, torch.tensor([[1.0, 0.2, 0.0]] * 4), c2, n_bands=2)
    b = cscr_loss(q, k, torch.tensor([[1.0, 1.0, 0.0]] * 4), c2, n_bands=2)
    assert float(a) != pytest.approx(float(b))


def test_gradient_pulls_query_towards_the_positive() -> None:
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    q = torch.tensor([[0.6, 0.8]], requires_grad=True)
    loss = cscr_loss(_unit(q), k, torch.tensor([[1.0, 0.0]]), torch.tensor([0.0, 1.0]), n_bands=2)
    loss.backward()
    assert q.grad is not None and q.grad[0, 0] < 0 < q.grad[0, 1]  # descent moves q towards key 0
