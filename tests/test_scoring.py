"""Left-padded batches, right-aligned completion targets, and log-probs that match a plain pass."""

from __future__ import annotations

import pytest
import torch

from helpers import random_pairs
from spearfl.algorithms import scoring
from spearfl.algorithms.scoring import (
    align_flags,
    build_batch,
    completion_logprobs,
    forward_passes,
)

CPU = torch.device("cpu")
PAD = 0


def test_build_batch_left_pads_and_right_aligns_targets():
    pairs = [([1, 2, 3], [4, 5]), ([6], [7, 8, 9])]
    batch = build_batch(pairs, PAD, CPU)
    # widest sequence is 5 tokens, longest completion 3 tokens
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5], [0, 6, 7, 8, 9]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 0, 1, 2, 3]]
    assert batch.targets.tolist() == [[0, 4, 5], [7, 8, 9]]
    assert batch.target_mask.tolist() == [[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]]


def test_build_batch_column_k_is_the_token_at_position_w_minus_k_plus_k():
    pairs = [([11, 12], [13]), ([21, 22, 23, 24], [25, 26, 27]), ([31], [32, 33])]
    batch = build_batch(pairs, PAD, CPU)
    width, k = batch.input_ids.shape[1], batch.targets.shape[1]
    assert (width, k) == (7, 3)
    for row, (_, completion) in enumerate(pairs):
        for col in range(k):
            if batch.target_mask[row, col]:
                assert batch.targets[row, col] == batch.input_ids[row, width - k + col]
        # the masked columns are exactly the completion, in order
        got = [int(t) for t, m in zip(batch.targets[row], batch.target_mask[row], strict=True) if m]
        assert got == completion


def test_build_batch_position_ids_count_real_tokens_only():
    batch = build_batch([([5], [6]), ([1, 2, 3, 4], [7, 8])], PAD, CPU)
    # row 0 has 4 pads then 2 real tokens: positions 0, 1 on the real ones
    assert batch.position_ids[0].tolist() == [0, 0, 0, 0, 0, 1]
    assert batch.position_ids[1].tolist() == [0, 1, 2, 3, 4, 5]


def test_build_batch_empty_completion_has_no_targets():
    batch = build_batch([([1, 2], []), ([3], [4, 5])], PAD, CPU)
    assert batch.input_ids.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert batch.target_mask.tolist() == [[0.0, 0.0], [1.0, 1.0]]
    assert batch.targets[1].tolist() == [4, 5]


def test_build_batch_all_empty_completions_keep_one_column():
    batch = build_batch([([1, 2], [])], PAD, CPU)
    assert batch.targets.shape == (1, 1)
    assert batch.target_mask.tolist() == [[0.0]]


def test_build_batch_splits_off_the_shared_prompt_prefix():
    pairs = [([1, 2, 3, 4], [7]), ([1, 2, 3, 5, 6], [8, 9])]
    batch = build_batch(pairs, PAD, CPU)
    assert batch.prefix_ids.tolist() == [[1, 2, 3]]
    # what follows the prefix is left-padded as before
    assert batch.input_ids.tolist() == [[0, 0, 4, 7], [5, 6, 8, 9]]
    assert batch.attention_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    # positions continue after the 3 prefix tokens, counting real tokens only
    assert batch.position_ids.tolist() == [[3, 3, 3, 4], [3, 4, 5, 6]]
    assert batch.targets.tolist() == [[0, 7], [8, 9]]
    assert batch.target_mask.tolist() == [[0.0, 1.0], [1.0, 1.0]]


def test_build_batch_prefix_leaves_each_row_a_prompt_token():
    batch = build_batch([([1, 2, 3], [4]), ([1, 2, 3], [5, 6])], PAD, CPU)
    assert batch.prefix_ids.tolist() == [[1, 2]]
    assert batch.input_ids.tolist() == [[0, 3, 4], [3, 5, 6]]
    assert batch.position_ids.tolist() == [[2, 2, 3], [2, 3, 4]]


def test_build_batch_without_prefix_sharing_or_for_one_row():
    plain = build_batch(
        [([1, 2, 3, 4], [7]), ([1, 2, 3, 5, 6], [8, 9])], PAD, CPU, share_prefix=False
    )
    assert plain.prefix_ids is None
    assert plain.input_ids.tolist() == [[0, 0, 1, 2, 3, 4, 7], [1, 2, 3, 5, 6, 8, 9]]
    assert plain.position_ids.tolist() == [[0, 0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6]]
    single = build_batch([([1, 2, 3, 4], [7])], PAD, CPU)
    assert single.prefix_ids is None
    assert single.input_ids.tolist() == [[1, 2, 3, 4, 7]]


def test_align_flags_right_aligns_to_targets():
    flags = [[True, False], [True, True, False], []]
    out = align_flags(flags, 4, CPU)
    assert out.dtype == torch.float32
    assert out.tolist() == [[0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]


def test_align_flags_lines_up_with_build_batch():
    pairs = [([1, 2], [3, 4, 5]), ([6, 7, 8], [9])]
    batch = build_batch(pairs, PAD, CPU)
    flags = [[False, True, True], [True]]
    mask = align_flags(flags, batch.targets.shape[1], CPU)
    # a flag lands on the column of its own completion token
    assert mask.tolist() == [[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]
    assert (mask <= batch.target_mask).all()


def _spans(passes):
    return [(p.start, p.stop) for p in passes]


def test_forward_passes_of_a_fixed_row_count():
    assert _spans(forward_passes([3, 1, 4, 1, 5], 2, vocab=10)) == [(0, 2), (2, 4), (4, 5)]
    assert forward_passes([], 2, vocab=10) == []


def test_forward_passes_keep_rows_times_longest_times_vocab_within_the_budget(monkeypatch):
    monkeypatch.setattr(scoring, "LOGITS_BUDGET", 20)
    # vocab 2: rows x longest <= 10. [3, 1] -> 2 x 3; adding 4 would make 3 x 4
    assert _spans(forward_passes([3, 1, 4, 1, 5, 5], None, vocab=2)) == [(0, 2), (2, 4), (4, 6)]
    # a row over the budget on its own still gets a pass; an empty completion counts as 1
    assert _spans(forward_passes([50, 0, 0], None, vocab=2)) == [(0, 1), (1, 3)]


def test_default_passes_at_the_paper_shape():
    """32 rows of 512 tokens + EOS: 3 rows a pass at Qwen2.5's vocabulary, 4 at Llama-3's."""
    qwen = forward_passes([513] * 32, None, vocab=151_936)
    assert [p.stop - p.start for p in qwen] == [3] * 10 + [2]
    assert 3 * 513 * 151_936 <= scoring.LOGITS_BUDGET < 4 * 513 * 151_936
    llama = forward_passes([513] * 32, None, vocab=128_256)
    assert [p.stop - p.start for p in llama] == [4] * 8


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    return model


def _reference_logprobs(model, pairs, k):
    """[B, K] expected values from one plain forward pass per unpadded sequence."""
    rows = []
    for prompt, completion in pairs:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + completion])).logits[0]
        logp = torch.log_softmax(logits.float(), dim=-1)
        # token j sits at position len(prompt) + j; the logits one step earlier predict it
        row = {
            k - len(completion) + j: float(logp[len(prompt) + j - 1, t])
            for j, t in enumerate(completion)
        }
        rows.append(row)
    return rows


@pytest.mark.parametrize("shared", [0, 6])
@pytest.mark.parametrize("share_prefix", [True, False])
def test_completion_logprobs_match_unpadded_forward_passes(tiny_llama, shared, share_prefix):
    pairs = random_pairs(7 + shared, shared)
    batch = build_batch(pairs, PAD, CPU, share_prefix=share_prefix)
    assert (batch.prefix_ids is not None) == (share_prefix and shared > 0)
    if batch.prefix_ids is not None:
        assert batch.prefix_ids.shape == (1, shared)
    with torch.no_grad():
        got = completion_logprobs(tiny_llama, batch)
    k = batch.targets.shape[1]
    assert got.shape == (len(pairs), k)
    for row, expected in enumerate(_reference_logprobs(tiny_llama, pairs, k)):
        assert sorted(expected) == [c for c in range(k) if batch.target_mask[row, c]]
        for col, value in expected.items():
            assert float(got[row, col]) == pytest.approx(value, abs=1e-5)


def _grads(model, batch):
    model.zero_grad(set_to_none=True)
    logp = completion_logprobs(model, batch)
    loss = -(logp * batch.target_mask).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


def test_shared_prefix_gives_the_gradients_of_the_plain_layout(tiny_llama):
    pairs = random_pairs(21, shared=6)
    shared_loss, shared = _grads(tiny_llama, build_batch(pairs, PAD, CPU))
    plain_loss, plain = _grads(tiny_llama, build_batch(pairs, PAD, CPU, share_prefix=False))
    assert shared_loss == pytest.approx(plain_loss, rel=1e-5)
    assert shared.keys() == plain.keys() and plain
    for name, grad in plain.items():
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(shared[name], grad, rtol=1e-4, atol=1e-6)
    # the shared prefix tokens' embeddings receive gradient through the repeated cache
    prefix_tokens = pairs[0][0][:6]
    assert shared["model.embed_tokens.weight"][prefix_tokens].abs().sum() > 0


def test_a_completion_without_a_prompt_token_is_refused(tiny_llama):
    batch = build_batch([((), (4, 5))], PAD, CPU)
    with pytest.raises(ValueError, match="at least one prompt token before every completion"):
        completion_logprobs(tiny_llama, batch)
