"""Evaluation from the frozen layers' kept states gives what the whole model gives.

Tiny random models of the paper's families (real tokenizers) and the chat-template Llama, LoRA
on the last of two layers with random, non-zero adapters: the adapted layer changes every
answer, so a state that wrongly depended on the adapter would show.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
