"""The shared optimiser loop: FedProx's proximal term added to the gradients equals the explicit
loss ``mu/2 ||w-w0||²``, and fp16 models train with a gradient scaler."""

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


# ------------------------------------------------------------- fp16 loss scaling
def _fp16_like_run(dtype: str, steps: int) -> tuple[torch.Tensor, list[float], object]:
    cfg = load_config(
        None,
        [
            f"model.dtype={dtype}",
            f"fl.local_train_steps={steps}",
            "optim.grad_accum_steps=2",
            "optim.max_grad_norm=100",
        ],
    )
    w = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.1]))
    scales: list[float] = []

    def micro_step(scale: float) -> float:
        scales.append(scale)
        # the gradient reaches the float32 parameter through fp16, as in an fp16 model
        loss = (w.half() * C.half()).sum().float()
        (scale * loss).backward()
        return float(loss.detach())

    stats = run_local_steps({"w": w}, lr=0.1, cfg=cfg, micro_step=micro_step)
    return w.detach(), scales, stats


def test_fp16_scales_the_loss_and_skips_a_step_that_overflows():
    w16, scales, stats = _fp16_like_run("fp16", steps=3)
    # GradScaler starts at 2**16: a gradient of 2**16 / 2 * |-2| overflows fp16 (max 65504), so
    # the first step is skipped and the factor halved; 2**15 fits, and stays for the next step.
    assert scales == [2.0**15] * 2 + [2.0**14] * 4
    assert (stats.steps, stats.skipped) == (2, 1)
    # the losses reported are unscaled: the first micro-step's is 0.15 + 0.4 + 0.1
    assert stats.losses[0] == pytest.approx(0.65, abs=1e-3)
    # the two steps taken are the plain (unscaled) ones: same parameters as fp32 with 2 steps
    w32, plain_scales, plain = _fp16_like_run("fp32", steps=2)
    assert plain_scales == [0.5] * 4 and plain.skipped == 0
    torch.testing.assert_close(w16, w32, rtol=0, atol=1e-7)
    assert not torch.allclose(w32, torch.tensor([0.3, -0.2, 0.1]))
