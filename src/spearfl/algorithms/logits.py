"""Per-token numbers from ``[rows, tokens, vocabulary]`` logits, without a full float32 copy.

``target_logprobs`` (every loss's log p(target)) and ``token_kl`` (OPSD's distillation) read the
logits one chunk of positions at a time (``CHUNK_ELEMENTS`` logits, upcast to float32 for that
chunk only) and write their gradient the same way. At the paper's shape, 32 rows x 512 tokens
x 151,936, a float32 log-softmax is 10 GB per copy and autograd kept several; here autograd
keeps only the logits themselves and one float per position.

Why hand-written: ``torch.nn.functional.cross_entropy`` and transformers' loss both build the
full log-softmax (and its gradient) over every position, in float32 for half-precision models.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

CHUNK_ELEMENTS = 2**24
"""Logits upcast to float32 at once (64 MiB): the chunk size of the two functions below."""


def _chunks(logits: torch.Tensor) -> Iterator[tuple[int, slice]]:
    """``(row, positions)`` pieces of ``[B, T, V]`` logits holding at most ``CHUNK_ELEMENTS``."""
    step = max(1, CHUNK_ELEMENTS // logits.shape[-1])
    for row in range(logits.shape[0]):
        for start in range(0, logits.shape[1], step):
            yield row, slice(start, start + step)


class _TargetLogprobs(torch.autograd.Function):
    """``logits[target] - logsumexp(logits)`` in float32; the backward pass writes
    ``g * (onehot(target) - softmax)`` chunk by chunk into one tensor of the logits' dtype."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        lse = torch.empty(logits.shape[:-1], dtype=torch.float32, device=logits.device)
        for row, pos in _chunks(logits):
            lse[row, pos] = torch.logsumexp(logits[row, pos].float(), dim=-1)
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float()
        ctx.save_for_backward(logits, targets, lse)
        return picked - lse

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for row, pos in _chunks(logits):
            g = grad_out[row, pos].unsqueeze(-1)
            piece = torch.exp(logits[row, pos].float() - lse[row, pos].unsqueeze(-1)).mul_(-g)
            piece.scatter_add_(-1, targets[row, pos].unsqueeze(-1), g)
            grad[row, pos] = piece
        return grad, None


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-probability (float32) of each target token under ``logits`` ([B, T, V] and [B, T]).

    Equal to ``log_softmax(logits.float())`` gathered at the targets, with the memory of the
    logits plus one float per position (module docstring).
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"target_logprobs needs [B, T, V] logits and [B, T] targets, "
            f"got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    return _TargetLogprobs.apply(logits, targets)


class _TokenKL(torch.autograd.Function):
    """Per position ``KL(softmax(t/T) ‖ softmax(s/T))``; gradient to the student only,
    ``g * (softmax(s/T) - softmax(t/T)) / T``, written chunk by chunk."""

    @staticmethod
    def forward(
        ctx, teacher: torch.Tensor, student: torch.Tensor, temperature: float
    ) -> torch.Tensor:
        out = torch.empty(student.shape[:-1], dtype=torch.float32, device=student.device)
        for row, pos in _chunks(student):
            t = torch.log_softmax(teacher[row, pos].float() / temperature, dim=-1)
            s = torch.log_softmax(student[row, pos].float() / temperature, dim=-1)
            out[row, pos] = (t.exp() * (t - s)).sum(-1)
        ctx.save_for_backward(teacher, student)
        ctx.temperature = temperature
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        teacher, student = ctx.saved_tensors
        temperature = ctx.temperature
        grad = torch.empty_like(student)
        for row, pos in _chunks(student):
            p_t = torch.softmax(teacher[row, pos].float() / temperature, dim=-1)
            piece = torch.softmax(student[row, pos].float() / temperature, dim=-1).sub_(p_t)
            grad[row, pos] = piece.mul_(grad_out[row, pos].unsqueeze(-1) / temperature)
        return None, grad, None


def token_kl(teacher: torch.Tensor, student: torch.Tensor, temperature: float) -> torch.Tensor:
    """``[B, T]`` float32 KL(teacher ‖ student) of the next-token distributions at ``T``.

    Exact (full distributions), one chunk of positions at a time. The teacher is a fixed
    target: its logits must come from a pass without gradient.
    """
    if teacher.shape != student.shape or student.dim() != 3:
        raise ValueError(
            f"token_kl needs teacher and student logits of one [B, T, V] shape, "
            f"got {tuple(teacher.shape)} and {tuple(student.shape)}"
        )
    if teacher.requires_grad:
        raise ValueError("token_kl: the teacher's logits must be computed without gradient")
    return _TokenKL.apply(teacher, student, temperature)
