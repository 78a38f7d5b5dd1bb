"""Per-token log-probs and KL from logits, chunk by chunk: the maths of a full float32
log-softmax (values and gradients), without keeping one for the backward pass."""

from __future__ import annotations

import math

import pytest
import torch

from spearfl.algorithms import logits as logits_module
from spearfl.algorithms.logits import target_logprobs, token_kl

B, T, V = 3, 7, 11


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 3 positions, so a row of 7 is read in three uneven pieces."""
    monkeypatch.setattr(logits_module, "CHUNK_ELEMENTS", 3 * V)


def _random(dtype=torch.float32, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(B, T, V, generator=gen)).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (B, T), generator=gen)
    weights = torch.randn(B, T, generator=gen)
    return logits, targets, weights


def _reference_logprobs(logits, targets):
    return torch.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def test_target_logprobs_is_log_softmax_at_the_target():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 3.0, 3.0]]])
    targets = torch.tensor([[2, 0]])
    got = target_logprobs(logits, targets)
    z = 1.0 + math.e + math.e**2
    expected = [2.0 - math.log(z), -math.log(3.0)]
    assert got.shape == (1, 2)
    assert got[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_target_logprobs_computes_in_float32_for_half_logits():
    logits = torch.tensor([[[0.0, 1.0, 2.0]]], dtype=torch.bfloat16)
    got = target_logprobs(logits, torch.tensor([[1]]))
    assert got.dtype == torch.float32
    z = 1.0 + math.e + math.e**2
    assert float(got) == pytest.approx(1.0 - math.log(z), abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_target_logprobs_values_and_gradient_equal_the_full_log_softmax(small_chunks, dtype):
    logits, targets, weights = _random(dtype)
    got = target_logprobs(logits, targets)
    assert got.dtype == torch.float32
    (got * weights).sum().backward()
    mine = logits.grad.clone()
    logits.grad = None
    expected = _reference_logprobs(logits, targets)
    (expected * weights).sum().backward()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert mine.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-2  # the gradient is stored in bf16
    torch.testing.assert_close(mine.float(), logits.grad.float(), rtol=tol, atol=tol)
    # d/dlogit of log p(target) = onehot - softmax: each row of the gradient sums to zero
    assert mine.float().sum(-1).abs().max() < 1e-5 + 10 * tol


def _saved_while(fn):
    """The tensors autograd keeps for the backward pass of ``fn()``."""
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


def test_target_logprobs_keeps_only_the_logits_for_backward(small_chunks):
    logits, targets, _ = _random(torch.bfloat16)
    out, saved = _saved_while(lambda: target_logprobs(logits, targets))
    big = [t for t in saved if t.numel() >= B * T * V]
    # the logits themselves, not a float32 copy (a log-softmax would be another [B, T, V])
    assert len(big) == 1 and big[0].data_ptr() == logits.data_ptr()
    assert big[0].dtype == torch.bfloat16
    assert sum(t.numel() for t in saved) == B * T * V + 2 * B * T  # + targets, logsumexp
    # what the old path kept: a float32 [B, T, V] log-softmax
    _, old = _saved_while(lambda: _reference_logprobs(logits, targets))
    assert any(t.dtype == torch.float32 and t.numel() == B * T * V for t in old)


def test_target_logprobs_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[B, T, V\] logits and \[B, T\] targets"):
        target_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def _reference_kl(teacher, student, temperature):
    t = torch.log_softmax(teacher.float() / temperature, -1)
    s = torch.log_softmax(student.float() / temperature, -1)
    return (t.exp() * (t - s)).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_token_kl_values_and_student_gradient_equal_the_full_formula(small_chunks, temperature):
    student, _, weights = _random(seed=1)
    teacher = _random(seed=2)[0].detach()
    got = token_kl(teacher, student, temperature)
    (got * weights).sum().backward()
    mine = student.grad.clone()
    student.grad = None
    expected = _reference_kl(teacher, student, temperature)
    (expected * weights).sum().backward()
    assert expected.min() > 0.01  # the distributions really differ
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(mine, student.grad, rtol=1e-5, atol=1e-6)


def test_token_kl_keeps_only_the_two_logits_and_refuses_a_teacher_with_gradient(small_chunks):
    student = _random(torch.bfloat16, seed=1)[0]
    teacher = _random(torch.bfloat16, seed=2)[0].detach()
    _, saved = _saved_while(lambda: token_kl(teacher, student, 2.0))
    assert sorted(t.data_ptr() for t in saved) == sorted([teacher.data_ptr(), student.data_ptr()])
    with pytest.raises(ValueError, match="teacher's logits must be computed without gradient"):
        token_kl(student, student, 2.0)
    with pytest.raises(ValueError, match="one \\[B, T, V\\] shape"):
        token_kl(teacher[:, :3], student, 2.0)
