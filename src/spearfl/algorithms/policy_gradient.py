"""Policy-gradient pieces shared by the GRPO and RLTF-SD baselines (SPEC §4).

The maths is kept in small functions of plain tensors so every number can be checked by hand.
Sequences are scored by their *mean* token log-probability (SPEC §4), so long and short
completions weigh the same in a ratio, a KL term or an advantage-weighted log-likelihood.
"""

from __future__ import annotations

import dataclasses
import random
import time
from abc import abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from spearfl.algorithms.base import ClientAlgorithm, ClientUpdateResult, RoundContext
from spearfl.algorithms.rollout import CountingGenerator
from spearfl.algorithms.scoring import (
    TokenBatch,
    build_batch,
    completion_logprobs,
    forward_passes,
    vocab_size,
)
from spearfl.algorithms.training import mean, round_lr, run_local_steps
from spearfl.config import GenConfig
from spearfl.models.generation import Completion
from spearfl.models.policy import Policy, question_prompts
from spearfl.tasks.base import Example

Row = tuple[Sequence[int], Sequence[int]]
"""``(prompt ids, completion ids)``: one sequence to score."""


def group_advantages(rewards: torch.Tensor, normalize: bool, eps: float = 1e-6) -> torch.Tensor:
    """``reward - group mean`` per row of ``[P, G]`` rewards, divided by the group's std.

    The *population* standard deviation (divide by G, not G - 1) is used: it is the spread of
    the rewards actually drawn, so a group ``[1, 0, 0, 1]`` gets advantages of exactly ±1 and a
    group of two never has its advantages inflated by the small-sample correction. A group
    whose std is below ``eps`` (all rewards equal) is not divided at all: its centred rewards
    are already zero, so it gets zeros rather than 0/0 = NaN.
    """
    rewards = rewards.to(torch.float32)
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if not normalize:
        return centred
    std = rewards.std(dim=-1, unbiased=False, keepdim=True)
    return centred / torch.where(std > eps, std, torch.ones_like(std))


def sequence_logprob(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean log-probability over the masked completion tokens of each row (``[B, K] -> [B]``).

    A row with no completion token scores 0 instead of NaN.
    """
    mask = mask.to(token_logprobs.dtype)
    return (token_logprobs * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def clipped_terms(
    logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, clip: float
) -> torch.Tensor:
    """Per-sequence PPO-clipped surrogate *loss* ``-min(ρA, clip(ρ, 1-ε, 1+ε)A)``."""
    ratio = torch.exp(logp_new - logp_old.detach())
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantages
    return -torch.minimum(unclipped, clipped)


def k3_terms(logp_new: torch.Tensor, logp_ref: torch.Tensor, clamp: float = 5.0) -> torch.Tensor:
    """Elementwise k3 estimator of KL(new ‖ ref): ``exp(d) - 1 - d``, ``d = ref - new``.

    ``d`` is clamped to ±``clamp`` so one badly scored sequence cannot blow up the loss.
    """
    d = (logp_ref.detach() - logp_new).clamp(-clamp, clamp)
    return torch.exp(d) - 1.0 - d


# ------------------------------------------------------------------ scoring helpers
def scored_row(prompt: Sequence[int], completion: Completion, eos: int) -> Row:
    """The sequence a sampled completion scores: its tokens, plus EOS when it was sampled.

    An answer cut off by the token limit never produced EOS, so EOS is not credited to it.
    """
    ids = completion.completion_ids
    return (tuple(prompt), (*ids, eos) if completion.finished else tuple(ids))


def chunks(
    policy: Policy, rows: Sequence[Row], size: int | None
) -> Iterator[tuple[int, Sequence[Row]]]:
    """``(start, rows)``, one per forward pass of ``size`` rows (``optim.micro_batch_size``;
    unset: as many as the logits budget allows, ``scoring.forward_passes``)."""
    lengths = [len(completion) for _, completion in rows]
    for part in forward_passes(lengths, size, vocab_size(policy.model)):
        yield part.start, rows[part]


def batch_of(policy: Policy, rows: Sequence[Row]) -> TokenBatch:
    return build_batch(rows, policy.tokenizer.pad_token_id, policy.device)


def sequence_logprobs(policy: Policy, rows: Sequence[Row], micro: int | None) -> torch.Tensor:
    """Mean-token log-probs ``[B]`` of ``rows`` under the current adapter, without gradients.

    Run in eval mode (no dropout): these are the log-probs of the policy that sampled.
    """
    out = []
    with eval_mode(policy), torch.no_grad():
        for _, part in chunks(policy, rows, micro):
            batch = batch_of(policy, part)
            logp = completion_logprobs(policy.model, batch)
            out.append(sequence_logprob(logp, batch.target_mask))
    return torch.cat(out) if out else torch.zeros(0, device=policy.device)


@contextmanager
def eval_mode(policy: Policy) -> Iterator[None]:
    """Dropout off for the duration; the previous train/eval mode comes back after."""
    was_training = policy.model.training
    policy.model.eval()
    try:
        yield
    finally:
        policy.model.train(was_training)


def reference_sequence_logprobs(
    policy: Policy,
    reference_adapter: Mapping[str, torch.Tensor],
    rows: Sequence[Row],
    micro: int | None,
) -> torch.Tensor:
    """Mean-token log-probs ``[B]`` of ``rows`` under the reference (no gradients).

    The reference (the adapter received at the round's start) is swapped into the same model
    and the trained tensors restored afterwards, so it costs adapter-sized memory only.
    """
    with policy.adapter_swapped(reference_adapter):
        return sequence_logprobs(policy, rows, micro)


# ------------------------------------------------------------ the shared client update
MIN_TEMPERATURE = 0.7
"""Group methods need diverse samples: generation temperature is at least this (SPEC §4)."""


def sampling_settings(gen: GenConfig) -> GenConfig:
    """``gen`` with sampling forced on and the temperature raised to ``MIN_TEMPERATURE``.

    Greedy decoding would give a group G identical answers, hence zero advantages.
    """
    temperature = max(gen.temperature, MIN_TEMPERATURE)
    return dataclasses.replace(gen, do_sample=True, temperature=temperature)


@dataclass
class RoundState:
    """What the micro-steps of one client round share."""

    examples: Sequence[Example]
    reference: Mapping[str, torch.Tensor]
    """The adapter received at the round's start: the KL reference."""
    generator: CountingGenerator
    rng: random.Random
    accum: int
    micro_index: int = 0
    rollout_seconds: float = 0.0
    counts: Counter[str] = field(default_factory=Counter)
    rollout: object = None
    """What :meth:`OnlineRLUpdate.begin_round` produced (RLTF-SD's traces); None for GRPO."""

    @property
    def at_reference(self) -> bool:
        """No optimiser step has run yet, so the current adapter *is* the reference."""
        return self.micro_index < self.accum


class OnlineRLUpdate(ClientAlgorithm):
    """Sample with the round's adapter and train on the samples: the skeleton of GRPO and RLTF-SD.

    Subclasses implement :meth:`micro_step`, which back-propagates ``scale * loss`` and records
    ``rollout_seconds`` and its counts in the round state. GRPO samples afresh in every
    micro-step; RLTF-SD samples once per round in :meth:`begin_round` and its micro-steps draw
    from that rollout.
    """

    @abstractmethod
    def micro_step(self, state: RoundState, scale: float) -> float:
        """One micro-step; returns the unscaled loss."""

    def begin_round(self, state: RoundState) -> None:
        """Work done once, before the first micro-step; nothing by default."""

    def n_eff(self, state: RoundState) -> float:
        """FedAvg weight: every example could have been drawn, so the client's dataset size."""
        return float(len(state.examples))

    def extra_metrics(self, state: RoundState) -> dict[str, float]:
        return {}

    def update(
        self,
        global_adapter: dict[str, torch.Tensor],
        examples: Sequence[Example],
        ctx: RoundContext,
    ) -> ClientUpdateResult:
        start = time.perf_counter()
        policy = self.policy
        policy.set_adapter(global_adapter)
        state = RoundState(
            examples=examples,
            reference=global_adapter,
            generator=CountingGenerator(
                policy, sampling_settings(self.cfg.gen), self.task, self.cfg.data.skip_bad_rows
            ),
            rng=ctx.rng("prompts"),
            accum=self.cfg.optim.grad_accum_steps,
        )
        lr = round_lr(self.cfg, ctx.round_num, ctx.total_rounds)

        def step(scale: float) -> float:
            try:
                return self.micro_step(state, scale)
            finally:
                state.micro_index += 1

        try:
            self.begin_round(state)
            stats = run_local_steps(policy.trainable(), lr=lr, cfg=self.cfg, micro_step=step)
        finally:
            policy.model.eval()
        c = state.counts
        samples = max(1.0, float(c["num_rollouts"]))
        metrics = {
            "num_rollouts": float(c["num_rollouts"]),
            "tokens_generated": float(state.generator.tokens),
            "completions_generated": float(state.generator.completions),
            "skipped_prompts": float(state.generator.skipped_prompts),
            "rollout_seconds": state.rollout_seconds,
            "train_seconds": time.perf_counter() - start - state.rollout_seconds,
            "mean_reward": c["reward_sum"] / samples,
            "y0_correct": float(c["y0_correct"]),
            "y0_accuracy": c["y0_correct"] / samples,
            "wins": float(c["wins"]),
            "losses": float(c["losses"]),
            "mean_loss": mean(stats.losses),
            "steps": float(stats.steps),
            "skipped_steps": float(stats.skipped),
            "prox_penalty": stats.prox_penalty,
            "lr": lr,
            "trained": float(stats.steps > 0),
        }
        metrics.update(self.extra_metrics(state))
        return ClientUpdateResult(policy.get_adapter(), self.n_eff(state), metrics)

    # ---------------------------------------------------------------- helpers
    def fitting_prompts(
        self, state: RoundState, examples: Sequence[Example]
    ) -> tuple[list[Example], list[list[int]]]:
        """The examples whose question prompt leaves room to answer, and those prompts (an
        over-long one is an error, or skipped and counted with ``data.skip_bad_rows``)."""
        prompts = question_prompts(self.policy, self.task, examples)
        kept = state.generator.fit(prompts, examples)
        return [examples[i] for i in kept], [prompts[i] for i in kept]

    def backward_rows(
        self,
        rows: Sequence[Row],
        row_loss: Callable[[torch.Tensor, slice], torch.Tensor],
        scale: float,
    ) -> float:
        """Back-propagate ``scale * sum(row_loss)`` over ``rows`` in memory-sized chunks.

        ``row_loss(logp, rows_slice)`` maps the chunk's sequence log-probs (with gradients)
        to per-row losses, already divided by whatever the micro-batch averages over, so the
        chunking (``optim.micro_batch_size``) leaves the maths unchanged.
        """
        policy = self.policy
        policy.model.train()
        total = 0.0
        for start, part in chunks(policy, rows, self.cfg.optim.micro_batch_size):
            batch = batch_of(policy, part)
            logp = sequence_logprob(completion_logprobs(policy.model, batch), batch.target_mask)
            loss = row_loss(logp, slice(start, start + len(part))).sum()
            (loss * scale).backward()
            total += float(loss.detach())
        return total
