"""Local optimisation pieces shared by every algorithm: fresh AdamW per round, clipped steps."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from spearfl.algorithms.schedule import lr_for_round
from spearfl.config import Config


def round_lr(cfg: Config, round_num: int, total_rounds: int) -> float:
    o = cfg.optim
    return lr_for_round(round_num, total_rounds, o.lr, o.lr_min, o.warmup_ratio, o.use_warmup)


@contextmanager
def training_mode(model: torch.nn.Module) -> Iterator[None]:
    """Train mode (dropout on) for the block, then the mode the model had before, even when the
    block raises: a failed round must not leave the next generation sampling with dropout."""
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was_training)


@dataclass
class StepStats:
    steps: int = 0
    skipped: int = 0
    last_grad_norm: float = 0.0
    losses: list[float] = field(default_factory=list)
    prox_penalty: float = 0.0
    """FedProx's ``mu/2 * ||w - w_global||²`` at the last step (0 without FedProx)."""


def add_proximal_gradient(
    params: Sequence[torch.nn.Parameter], start: Sequence[torch.Tensor], mu: float
) -> float:
    """Add FedProx's proximal term to the gradients; return the term's value.

    The term ``mu/2 * ||w - w0||²`` (``w0``: the adapter received this round) has gradient
    ``mu * (w - w0)``, so adding it to ``.grad`` is exact and costs no extra forward pass.
    """
    penalty = 0.0
    with torch.no_grad():
        for p, p0 in zip(params, start, strict=True):
            diff = p.detach() - p0
            penalty += 0.5 * mu * float(diff.pow(2).sum())
            if p.grad is None:
                p.grad = mu * diff
            else:
                p.grad.add_(diff, alpha=mu)
    return penalty


def loss_scaler(cfg: Config, params: Sequence[torch.nn.Parameter]) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 models, None otherwise.

    fp16 has five exponent bits: small gradients underflow to zero and large ones overflow.
    The scaler multiplies the loss before backward, divides the gradients back before clipping
    and the step, and halves its factor after an overflow (the step is then skipped). bf16 and
    fp32 have float32's range and need none. The LoRA parameters themselves stay float32 (peft
    upcasts adapters of half-precision models), which is what the scaler requires.
    """
    if cfg.model.dtype != "fp16" or not params:
        return None
    return torch.amp.GradScaler(params[0].device.type)


def run_local_steps(
    params: Mapping[str, torch.nn.Parameter],
    *,
    lr: float,
    cfg: Config,
    micro_step: Callable[[float], float],
) -> StepStats:
    """``local_train_steps`` optimiser steps of ``grad_accum_steps`` micro-steps each.

    ``micro_step(scale)`` computes one micro-batch loss, back-propagates ``scale * loss`` and
    returns the unscaled loss value. A fresh AdamW on the LoRA parameters (SPEC §2); with
    ``fl.fedprox_mu > 0`` FedProx's proximal term pulls towards the parameters as they were on
    entry (the received global adapter); gradients clipped to ``max_grad_norm``; a step whose
    gradient norm is NaN/inf is skipped rather than corrupting the adapter. With an fp16 model
    the loss is scaled by ``loss_scaler`` (``scale`` then includes its factor).
    """
    o = cfg.optim
    trainable = list(params.values())
    mu = cfg.fl.fedprox_mu
    start = [p.detach().clone() for p in trainable] if mu > 0 else []
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=o.weight_decay)
    scaler = loss_scaler(cfg, trainable)
    stats = StepStats()
    accum = o.grad_accum_steps
    for _ in range(cfg.fl.local_train_steps):
        optimizer.zero_grad(set_to_none=True)
        factor = 1.0
        if scaler is not None:
            factor = float(scaler.scale(torch.ones((), device=trainable[0].device)))
        for _ in range(accum):
            stats.losses.append(micro_step(factor / accum))
        if scaler is not None:
            scaler.unscale_(optimizer)
        if mu > 0:
            stats.prox_penalty = add_proximal_gradient(trainable, start, mu)
        norm = torch.nn.utils.clip_grad_norm_(trainable, o.max_grad_norm)
        stats.last_grad_norm = float(norm)
        if not math.isfinite(stats.last_grad_norm):
            stats.skipped += 1
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.update()  # an overflow: a smaller factor next step
            continue
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        stats.steps += 1
    optimizer.zero_grad(set_to_none=True)
    return stats


def ema_blend(
    local: Mapping[str, torch.Tensor], received: Mapping[str, torch.Tensor], decay: float
) -> dict[str, torch.Tensor]:
    """``decay * received + (1 - decay) * local``: keeps the update close to the global adapter."""
    if decay <= 0:
        return dict(local)
    return {k: decay * received[k] + (1.0 - decay) * v for k, v in local.items()}


def mean(values: Sequence[float]) -> float:
    """The values' mean; 0 when there are none (a round with nothing to train on)."""
    return sum(values) / len(values) if values else 0.0


def sample_batch(items: Sequence, size: int, rng) -> list:
    """``size`` items: without replacement when there are enough, with replacement otherwise."""
    if not items:
        return []
    if len(items) >= size:
        return rng.sample(list(items), size)
    return [rng.choice(items) for _ in range(size)]
