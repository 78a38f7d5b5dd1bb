"""GRPO baseline (SPEC §4): G sampled answers per prompt, group-relative advantages, PPO clip.

Every micro-step draws fresh prompts, samples G completions each with the current adapter,
rewards them 1/0, and takes the clipped policy-gradient loss against the log-probs of the
policy that sampled (computed right after generation, before any update), plus a k3-KL to the
adapter received at the round's start. It is the G-generations-per-prompt cost SPEAR avoids.

The sampling policy's log-probs (ratio denominator) and the reference's are taken without
dropout; the gradient pass runs in train mode, as SPEAR's does. Each sample batch gets one
update, so with ``lora.dropout = 0`` the ratio is exactly 1 and the objective is the plain
group-relative policy gradient; with dropout the ratio carries dropout noise, which the clip
bounds. Until the first optimiser step the adapter *is* the reference, so the reference
log-probs are the sampling ones and no adapter swap is made.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from spearfl.algorithms.policy_gradient import (
    OnlineRLUpdate,
    RoundState,
    clipped_terms,
    group_advantages,
    k3_terms,
    reference_sequence_logprobs,
    scored_row,
    sequence_logprobs,
)
from spearfl.algorithms.registry import register_algorithm
from spearfl.algorithms.rollout import sample_prompts
from spearfl.config import Section, setting


def grpo_rewards(correct: Sequence[bool], scale: float, clip: float | None) -> torch.Tensor:
    """1/0 correctness times ``reward_scale``, clipped to ±``reward_clip`` when set."""
    rewards = torch.tensor([float(c) for c in correct], dtype=torch.float32) * scale
    return rewards.clamp(-clip, clip) if clip is not None else rewards


@dataclass
class GRPOConfig(Section, section="grpo"):
    """GRPO's group and policy-gradient settings (RLTF-SD reads its group size, KL weight and
    reward scale here too, as the paper's code does)."""

    num_generations: int = setting(4, doc="G: answers sampled per prompt", ge=2)
    beta_kl: float = setting(
        0.02, doc="weight of the k3-KL to the adapter received this round", ge=0
    )
    clip_range: float = setting(0.2, doc="PPO clip of the probability ratio", gt=0)
    normalize_advantage: bool = setting(
        True, doc="divide group-relative advantages by the group's standard deviation"
    )
    reward_scale: float = setting(1.0, doc="reward of a right answer (a wrong one gets 0)")
    reward_clip: float | None = setting(
        None, doc="clip rewards to plus or minus this (none: no clip)", gt=0
    )


@register_algorithm("grpo", GRPOConfig)
class GRPOUpdate(OnlineRLUpdate):
    METRIC_MEANINGS = {
        "n_eff": "the client's examples (any of them could have been drawn)",
        "wins": "sampled answers that were right (reward 1)",
        "losses": "sampled answers that were wrong (reward 0)",
    }

    def micro_step(self, state: RoundState, scale: float) -> float:
        cfg, policy = self.cfg.grpo, self.policy
        micro = self.cfg.optim.micro_batch_size
        group = cfg.num_generations

        started = time.perf_counter()
        chosen = sample_prompts(state.examples, self.cfg.optim.batch_size, state.rng)
        chosen, fitting = self.fitting_prompts(state, chosen)
        if not chosen:
            return 0.0
        prompts = [p for p in fitting for _ in range(group)]
        outs = state.generator(prompts, self.cfg.gen.max_new_tokens_y0)
        correct = [self.provider.check(chosen[i // group], o.text) for i, o in enumerate(outs)]
        rewards = grpo_rewards(correct, cfg.reward_scale, cfg.reward_clip)
        state.rollout_seconds += time.perf_counter() - started

        n_right = sum(correct)
        state.counts.update(
            num_rollouts=len(outs),
            y0_correct=n_right,
            wins=n_right,
            losses=len(outs) - n_right,
            reward_sum=float(rewards.sum()),
        )
        advantages = group_advantages(rewards.view(len(chosen), group), cfg.normalize_advantage)
        advantages = advantages.flatten().to(policy.device)
        rows = [scored_row(p, o, policy.eos_id) for p, o in zip(prompts, outs)]
        # The ratio's denominator is the pre-step policy, which sampled these rows and has not
        # stepped since. Without dropout its log-probs are the step's own, detached (as TRL
        # does for one pass over fresh samples); with dropout, a pass in eval mode.
        old = None if policy.dropout_free else sequence_logprobs(policy, rows, micro)
        ref = None
        if cfg.beta_kl > 0 and not state.at_reference:
            ref = reference_sequence_logprobs(policy, state.reference, rows, micro)

        def row_loss(logp: torch.Tensor, part: slice) -> torch.Tensor:
            before = logp.detach() if old is None else old[part]
            loss = clipped_terms(logp, before, advantages[part], cfg.clip_range)
            if cfg.beta_kl > 0:  # at the reference, KL(new ‖ pre-step policy)
                loss = loss + cfg.beta_kl * k3_terms(logp, before if ref is None else ref[part])
            return loss / len(rows)  # the mean over the micro-batch's sequences

        return self.backward_rows(rows, row_loss, scale)
