"""The shared-prefix decoding loop against Hugging Face ``generate``, and early stopping."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from spearfl.models.generation import (
    PrefixRunner,
    common_prefix_length,
    decode,
    left_pad,
    sample_next,
)

PAD, EOS = 0, 1


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )
    return LlamaForCausalLM(config).eval()


PROMPTS = [
    [5, 6, 7, 8, 9, 10, 11],
    [5, 6, 7, 8, 12, 13],
    [5, 6, 7, 8, 14, 15, 16, 17, 18],
]


def test_common_prefix_leaves_every_prompt_a_token():
    assert common_prefix_length(PROMPTS) == 4
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert common_prefix_length([[4], [4, 5]]) == 0


@torch.no_grad()
def test_prefix_shared_greedy_equals_plain_generate(model):
    runner = PrefixRunner(model, PROMPTS, PAD)
    assert runner.prefix_len == 4
    state = runner.prefill(PROMPTS)
    ours, _ = decode(
        model,
        state,
        max_new_tokens=6,
        stop_ids={EOS},
        pad_id=PAD,
        pick=lambda lg: sample_next(lg, False, 1.0, 1.0),
    )
    for prompt, got in zip(PROMPTS, ours):
        ids, mask = left_pad([prompt], PAD, torch.device("cpu"))
        ref = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=EOS,
            pad_token_id=PAD,
        )
        expected = [t for t in ref[0, ids.shape[1] :].tolist()]
        if EOS in expected:
            expected = expected[: expected.index(EOS)]
        assert got == expected


@torch.no_grad()
def test_stop_when_ends_a_sequence_early(model):
    runner = PrefixRunner(model, PROMPTS, PAD)
    state = runner.prefill(PROMPTS)
    tokens, finished = decode(
        model,
        state,
        max_new_tokens=8,
        stop_ids={EOS},
        pad_id=PAD,
        pick=lambda lg: sample_next(lg, False, 1.0, 1.0),
        stop_when=lambda ids: len(ids) >= 2,
    )
    assert all(len(t) <= 2 for t in tokens)
    # stopping on a condition is not the model ending its answer (no EOS was generated)
    assert not any(finished[i] for i, t in enumerate(tokens) if len(t) == 2)


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    torch.manual_seed(0)
    draws = {int(sample_next(logits, True, 1.0, 0.8)) for _ in range(200)}
    assert draws == {0, 1}
