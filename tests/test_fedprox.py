"""FedProx: the proximal term added to the gradients equals the explicit loss ``mu/2 ||w-w0||²``."""

from __future__ import annotations

import pytest
import torch

from spearfl.algorithms.training import add_proximal_gradient, run_local_steps
from spearfl.config import load_config

C = torch.tensor([0.5, -2.0, 1.0])


def test_proximal_gradient_and_penalty_by_hand():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, -1.0]))
    w0 = torch.tensor([0.0, 2.5, -1.0])
    w.grad = torch.tensor([0.1, 0.1, 0.1])
    penalty = add_proximal_gradient([w], [w0], mu=0.2)
    # diff = (1, -0.5, 0): penalty = 0.1 * (1 + 0.25) = 0.125, grad += 0.2 * diff
    assert penalty == pytest.approx(0.125)
    assert torch.allclose(w.grad, torch.tensor([0.3, 0.0, 0.1]))
    fresh = torch.nn.Parameter(torch.tensor([1.0]))  # no gradient yet: the term alone
    add_proximal_gradient([fresh], [torch.tensor([3.0])], mu=0.5)
    assert torch.allclose(fresh.grad, torch.tensor([-1.0]))


def _train(mu_in_config: float, explicit_mu: float) -> tuple[torch.Tensor, float]:
    cfg = load_config(
        None,
        [
            f"fl.fedprox_mu={mu_in_config}",
            "fl.local_train_steps=3",
            "optim.grad_accum_steps=2",
            "optim.max_grad_norm=100",
            "optim.weight_decay=0",
        ],
    )
    w = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.1]))
    w0 = w.detach().clone()

    def micro_step(scale: float) -> float:
        loss = (C * w).sum() + 0.5 * (w**2).sum()
        if explicit_mu:
            loss = loss + 0.5 * explicit_mu * (w - w0).pow(2).sum()
        (scale * loss).backward()
        return float(loss.detach())

    stats = run_local_steps({"w": w}, lr=0.1, cfg=cfg, micro_step=micro_step)
    assert stats.steps == 3
    return w.detach(), stats.prox_penalty


def test_fedprox_in_the_optimiser_equals_the_explicit_proximal_loss():
    via_config, penalty = _train(mu_in_config=0.7, explicit_mu=0.0)
    explicit, _ = _train(mu_in_config=0.0, explicit_mu=0.7)
    plain, no_penalty = _train(mu_in_config=0.0, explicit_mu=0.0)
    assert torch.allclose(via_config, explicit, atol=1e-6)
    assert not torch.allclose(via_config, plain, atol=1e-4)  # the term does act
    assert no_penalty == 0.0 and penalty > 0
