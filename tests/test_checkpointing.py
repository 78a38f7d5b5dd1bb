"""Gradient checkpointing changes memory, not maths: one client update of every algorithm gives
the same losses and gradients with it on as off, on both paper model families.

(The adapters after the step are not compared: AdamW's first step is ``lr * g / (|g| + eps)``
per element, which turns a 1e-9 difference in a near-zero gradient into one of order ``lr``.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import ParityTask
from spearfl.algorithms.base import RoundContext
from spearfl.algorithms.registry import build_algorithm
from spearfl.algorithms.scoring import build_batch, completion_logprobs, drops_cache
from spearfl.config import load_config
from spearfl.feedback.oracle import OracleFeedback
from spearfl.models.policy import Policy

ALGORITHMS = ["spear", "feedback_sft", "grpo", "opsd", "rltf_sd"]
TASK = ParityTask(seed=42, num_train_examples=60, num_eval_examples=8)
EXAMPLES = TASK.load().train[:6]


def _config(model_dir: Path, algorithm: str, checkpointing: bool):
    return load_config(
        None,
        [
            f"model.model_name={model_dir}",
            f"model.gradient_checkpointing={str(checkpointing).lower()}",
            f"algorithm.name={algorithm}",
            "lora.dropout=0.0",
            "lora.r=4",
            "fl.local_rollout_steps=4",
            "fl.local_train_steps=1",
            "optim.grad_accum_steps=2",
            "optim.batch_size=2",
            "optim.lr=0.01",
            "optim.lr_min=0.001",
            "grpo.num_generations=4",
            "gen.max_new_tokens_y0=6",
            "gen.max_new_tokens_y1=6",
            "gen.num_revisions=1",
            "spear.unlikelihood_margin=0.0",
        ],
    )


_POLICIES: dict[tuple[Path, bool], Policy] = {}
_RECEIVED: dict[Path, dict[str, torch.Tensor]] = {}


def _policy(model_dir: Path, checkpointing: bool) -> Policy:
    key = (model_dir, checkpointing)
    if key not in _POLICIES:
        torch.manual_seed(0)
        _POLICIES[key] = Policy.from_config(_config(model_dir, "spear", checkpointing))
    return _POLICIES[key]


def _received(model_dir: Path) -> dict[str, torch.Tensor]:
    """The initial adapter with B moved off zero, so every LoRA tensor gets a gradient."""
    if model_dir not in _RECEIVED:
        gen = torch.Generator().manual_seed(7)
        _RECEIVED[model_dir] = {
            k: v + 0.05 * torch.randn(v.shape, generator=gen) if "lora_B" in k else v.clone()
            for k, v in _policy(model_dir, False).get_adapter().items()
        }
    return {k: v.clone() for k, v in _RECEIVED[model_dir].items()}


def _update(model_dir: Path, algorithm: str, checkpointing: bool):
    """One update; returns its result and each LoRA tensor's gradient at the optimiser step."""
    policy = _policy(model_dir, checkpointing)
    cfg = _config(model_dir, algorithm, checkpointing)
    grads: dict[str, torch.Tensor] = {}
    hooks = [
        p.register_post_accumulate_grad_hook(
            lambda p, name=name: grads.__setitem__(name, p.grad.detach().clone())
        )
        for name, p in policy.trainable().items()
    ]
    try:
        torch.manual_seed(11)
        algo = build_algorithm(cfg, policy, TASK, OracleFeedback(TASK))
        result = algo.update(_received(model_dir), EXAMPLES, RoundContext(1, 4, 0, 42))
    finally:
        for hook in hooks:
            hook.remove()
    return result, grads


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_update_with_checkpointing_equals_update_without(tiny_paper_model_dir, algorithm):
    off, g_off = _update(tiny_paper_model_dir, algorithm, checkpointing=False)
    on, g_on = _update(tiny_paper_model_dir, algorithm, checkpointing=True)

    assert off.metrics["steps"] == on.metrics["steps"] == 1  # it trained
    assert on.metrics["tokens_generated"] == off.metrics["tokens_generated"]
    assert on.metrics["mean_loss"] == pytest.approx(off.metrics["mean_loss"], abs=1e-5)
    assert g_off.keys() == g_on.keys() == _received(tiny_paper_model_dir).keys()
    for name, grad in g_off.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(g_on[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_checkpointed_scoring_runs_the_shared_prefix_inline(tiny_paper_model_dir):
    """The crash this fixes: checkpointed layers return no KV cache for the shared prefix."""
    plain = _policy(tiny_paper_model_dir, False)
    checkpointed = _policy(tiny_paper_model_dir, True)
    layers = [m for m in checkpointed.model.modules() if getattr(m, "gradient_checkpointing", 0)]
    assert layers and all(
        m._gradient_checkpointing_func.keywords == {"use_reentrant": False} for m in layers
    )
    rows = [((5, 6, 7, 8), (9, 10)), ((5, 6, 7, 11, 12), (13, 14, 15))]
    batch = build_batch(rows, 0, checkpointed.device)
    assert batch.prefix_ids.tolist() == [[5, 6, 7]]
    results = []
    for policy in (plain, checkpointed):
        policy.set_adapter(_received(tiny_paper_model_dir))
        policy.model.train()
        try:
            assert drops_cache(policy.model) == (policy is checkpointed)
            logp = completion_logprobs(policy.model, batch)
            (logp * batch.target_mask).sum().backward()
            grads = {n: p.grad.clone() for n, p in policy.trainable().items()}
            policy.model.zero_grad(set_to_none=True)
        finally:
            policy.model.eval()
        results.append((logp.detach(), grads))
    (lp_plain, g_plain), (lp_ckpt, g_ckpt) = results
    torch.testing.assert_close(lp_ckpt, lp_plain, rtol=0, atol=1e-5)
    for name, grad in g_plain.items():
        torch.testing.assert_close(g_ckpt[name], grad, rtol=1e-4, atol=1e-6, msg=name)
