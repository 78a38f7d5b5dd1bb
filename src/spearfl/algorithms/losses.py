"""SPEAR's loss terms on token log-probabilities (SPEC §3 step 9).

All functions take per-token log-probabilities of the target tokens and a 0/1 mask of the tokens
that count, both shaped ``[batch, tokens]``, so they can be checked by hand on small tensors.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from spearfl.algorithms.logits import token_kl

_P_MAX = 1.0 - 1e-6
"""Probabilities are clamped below 1 so that -log(1 - p) stays finite."""


def mle_loss(
    logprobs: torch.Tensor, mask: torch.Tensor, count: float | None = None
) -> torch.Tensor:
    """Token cross-entropy summed over the masked (completion) tokens, divided by ``count``.

    ``count`` defaults to the number of masked tokens here (the mean). A micro-batch split into
    several forward passes passes the whole micro-batch's count, so the pieces add up to the
    loss of the micro-batch in one pass.
    """
    mask = mask.to(logprobs.dtype)
    count = float(mask.sum()) if count is None else count
    if count == 0:
        return logprobs.new_zeros(())
    return -(logprobs * mask).sum() / count


def unlikelihood_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    confidences: torch.Tensor,
    margin: float,
    count: float | None = None,
) -> torch.Tensor:
    """Confidence-weighted unlikelihood ``-log(1 - p)`` on tokens the model still likes.

    A token counts only where ``p > margin``; the sum is divided by ``count``, by default the
    number of masked positions here (not just those above the margin; a micro-batch split into
    forward passes passes its whole count, as for :func:`mle_loss`), then multiplied by the
    micro-batch's mean confidence (1.0 for a loss whose prompt a revision fixed, 0.5 otherwise).
    """
    mask = mask.to(logprobs.dtype)
    count = float(mask.sum()) if count is None else count
    if count == 0:
        return logprobs.new_zeros(())
    probs = logprobs.exp().clamp(max=_P_MAX)
    active = (probs > margin).to(logprobs.dtype) * mask
    penalty = -torch.log1p(-probs)
    return (penalty * active).sum() / count * confidences.to(logprobs.dtype).mean()


def distill_kl(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Mean over masked tokens of KL(softmax(t/T) ‖ softmax(s/T)), times T² (OPSD, SPEC §4).

    Logits are ``[B, K, V]``, the mask ``[B, K]``. The T² factor keeps gradient sizes comparable
    across temperatures (Hinton et al.). An all-zero mask gives a zero that still back-propagates.
    """
    per_token = token_kl(teacher_logits, student_logits, temperature)
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0) * temperature**2


def anchor_loss(
    params: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Mean squared distance of the adapter to the global adapter received this round."""
    total = None
    count = 0
    for name, param in params.items():
        diff = (param - reference[name].to(param.device, param.dtype)).pow(2).sum()
        total = diff if total is None else total + diff
        count += param.numel()
    if total is None:
        return torch.zeros(())
    return total / count
