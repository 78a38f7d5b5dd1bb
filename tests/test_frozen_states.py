"""Evaluation from the frozen layers' kept states gives what the whole model gives.

Tiny random models of the paper's families (real tokenizers) and the chat-template Llama, LoRA
on the last of two layers with random, non-zero adapters: the adapted layer changes every
answer, so a state that wrongly depended on the adapter would show.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import random_pairs
from spearfl.config import load_config
from spearfl.evaluation.evaluator import Evaluator
from spearfl.models.policy import Policy
from spearfl.models.trunk import Trunk
from spearfl.tasks.arc import ArcChallengeTask
from spearfl.tasks.base import Example
from spearfl.tasks.embedded import EmbeddedCategoryTask
from spearfl.tasks.strategyqa import StrategyQATask


def _policy(model_dir: Path, last_n_layers: str = "1") -> Policy:
    overrides = [f"model.model_name={model_dir}", f"lora.last_n_layers={last_n_layers}"]
    torch.manual_seed(0)
    return Policy.from_config(load_config(None, [*overrides, "lora.r=4"]))


def _random_adapter(policy: Policy, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in policy.trainable().values():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def _outputs(evaluator: Evaluator) -> tuple[list[str], list[list[float]]]:
    """What an evaluation reads: greedy answers and per-option (or per-letter) scores."""
    method = evaluator.task.eval_method
    if method == "option_text":
        return evaluator.option_outputs()
    if method == "letter_loglik":
        return [], evaluator.letter_scores()
    return evaluator.answers(), []


def _prefill_calls(policy: Policy) -> tuple[list[int], object]:
    """Lengths of the inputs the lowest (frozen) layer sees, and the hook's handle."""
    seen: list[int] = []
    layer = policy.model.get_base_model().model.layers[0]
    handle = layer.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    return seen, handle


ARC_EXAMPLES = [
    Example("a", "Which is a gas?", ("ice", "steam", "stone"), "B", "B"),
    Example("b", "What do plants need to make food from water and air?",
            ("sand", "light", "salt", "iron"), "B", "B"),
    Example("c", "Which planet is closest to the Sun?", ("Mars", "Venus", "Mercury", "Earth"),
            "C", "C"),
]  # fmt: skip
YES_NO = [
    Example("y", "Do penguins live at the South Pole?", ("yes", "no"), "yes", "yes"),
    Example("n", "Can cats fly over the tallest mountains of the world?", ("yes", "no"), "no",
            "no"),
]  # fmt: skip


@pytest.mark.parametrize("adapter_seeds", [(1, 2)])
def test_kept_states_give_the_whole_models_answers_and_scores(
    adapter_seeds, tiny_paper_model_dir, tiny_model_dir
):
    cases = [
        (_policy(tiny_model_dir), EmbeddedCategoryTask(), EmbeddedCategoryTask().load().eval[:7]),
        (_policy(tiny_paper_model_dir), ArcChallengeTask(path="unused"), ARC_EXAMPLES),
        (_policy(tiny_paper_model_dir), StrategyQATask(path="unused"), YES_NO),
    ]
    for policy, task, examples in cases:
        assert Trunk.of(policy.model).depth == 1  # two layers, the upper one adapted
        fast = Evaluator(policy, task, examples, batch_size=3, max_new_tokens=6)
        plain = Evaluator(
            policy, task, examples, batch_size=3, max_new_tokens=6, reuse_frozen_states=False
        )
        seen = []
        for seed in adapter_seeds:  # states kept at the first adapter serve the second
            _random_adapter(policy, seed)
            with torch.no_grad():
                texts, scores = _outputs(fast)
                want_texts, want_scores = _outputs(plain)
            assert fast.frozen_states() is not None and plain.frozen_states() is None
            assert texts == want_texts
            scored = 0 if task.eval_method == "generative" else len(examples)
            assert len(scores) == len(want_scores) == scored
            for row, want in zip(scores, want_scores, strict=True):
                assert row == pytest.approx(want, abs=1e-4)
            seen.append(scores or texts)
        assert seen[0] != seen[1]  # the adapter does change what the model says


def test_later_evaluations_run_the_frozen_layer_on_new_tokens_only(tiny_model_dir):
    policy = _policy(tiny_model_dir)
    task = EmbeddedCategoryTask()
    evaluator = Evaluator(policy, task, task.load().eval[:5], batch_size=2, max_new_tokens=4)
    lengths, handle = _prefill_calls(policy)
    try:
        first = evaluator.evaluate()
        at_first = list(lengths)
        lengths.clear()
        again = evaluator.evaluate()
    finally:
        handle.remove()
    assert max(at_first) > 1  # the first evaluation ran the prompts through the frozen layer
    assert lengths and set(lengths) == {1}  # later ones: only the greedy tokens, one at a time
    assert again["correct"] == first["correct"]
    assert again["option_correct"] == first["option_correct"]


def test_no_kept_states_when_every_layer_is_adapted(tiny_model_dir):
    policy = _policy(tiny_model_dir, last_n_layers="2")
    assert Trunk.of(policy.model) is None
    task = EmbeddedCategoryTask()
    evaluator = Evaluator(policy, task, task.load().eval[:2], batch_size=2, max_new_tokens=2)
    assert evaluator.frozen_states() is None


# ----------------------------------------------------------- training rows' kept states
PAD = 0


def _lora_llama(checkpointing: bool = False):
    """Two random Llama layers, LoRA (random, non-zero) on the upper one only."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from spearfl.models.adapter import attach_lora
    from spearfl.models.loading import prepare_for_training

    torch.manual_seed(1234)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=32, max_position_embeddings=64,
        pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    base = LlamaForCausalLM(config)
    prepare_for_training(base, quantized=False, checkpointing=checkpointing)
    model = attach_lora(
        base, r=4, alpha=8, dropout=0.0, bias="none", target_modules=["q_proj", "v_proj"],
        last_n_layers=1, seed=0,
    )  # fmt: skip
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape) * 0.3)
    return model


def _reference(model, pairs):
    """Per row, the completion's log-probabilities from one whole-model pass of the unpadded
    sequence, and the LoRA gradients of their summed negative."""
    model.zero_grad(set_to_none=True)
    rows = []
    for prompt, completion in pairs:
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        picked = torch.stack([logp[len(prompt) + j - 1, t] for j, t in enumerate(completion)])
        (-picked.sum()).backward()
        rows.append(picked.detach().tolist())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return rows, grads


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("shared", [0, 6])
def test_training_rows_from_kept_states_give_the_whole_models_logprobs_and_gradients(
    checkpointing, shared
):
    from spearfl.algorithms.scoring import build_batch, completion_logprobs, drops_cache
    from spearfl.models.trunk import forget_frozen_states, frozen_memo

    model = _lora_llama(checkpointing)
    model.train()
    pairs = random_pairs(11 + shared, shared)
    want_rows, want_grads = _reference(model, pairs)
    memo = frozen_memo(model)
    assert memo is not None and memo.trunk.depth == 1
    for _ in range(2):  # the second time from the kept states
        batch = build_batch(pairs, PAD, torch.device("cpu"))
        assert drops_cache(model) == checkpointing and (batch.prefix_ids is not None) == bool(
            shared
        )
        model.zero_grad(set_to_none=True)
        logp = completion_logprobs(model, batch)
        (-(logp * batch.target_mask).sum()).backward()
        k = batch.targets.shape[1]
        for row, ((_, completion), want) in enumerate(zip(pairs, want_rows, strict=True)):
            got = logp[row, k - len(completion) :].tolist()
            assert got == pytest.approx(want, abs=1e-5)
        for name, grad in want_grads.items():
            torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad,
                                       rtol=1e-4, atol=1e-6)  # fmt: skip
        assert memo.computed_rows == len(pairs)  # once per row, not once per step
    forget_frozen_states(model)  # a new adapter: the next update runs its rows again
    with torch.no_grad():
        completion_logprobs(model, build_batch(pairs, PAD, torch.device("cpu")))
    assert memo.computed_rows == 2 * len(pairs)


def test_the_memo_stays_within_its_budget():
    from spearfl.models.trunk import FrozenStateMemo, Trunk

    model = _lora_llama()
    memo = FrozenStateMemo(Trunk.of(model), budget=3 * 12 * 16 * 4)  # three 12-token rows
    rows = [tuple(range(3 + i, 15 + i)) for i in range(5)]
    for row in rows:
        memo.rows((), [row])
    assert memo.bytes <= memo.budget and len(memo.entries) == 3
    assert [key[1] for key in memo.entries] == rows[2:]  # the oldest went first
    state = memo.rows((), [rows[4]])[0]
    assert state.shape == (12, 16) and memo.computed_rows == 5
