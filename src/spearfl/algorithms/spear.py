"""SPEAR's client update (SPEC §3): self-play rollout, then MLE on wins + unlikelihood on losses."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from spearfl.algorithms.base import ClientAlgorithm, ClientUpdateResult, RoundContext
from spearfl.algorithms.logits import target_logprobs
from spearfl.algorithms.losses import anchor_loss, mle_loss, unlikelihood_loss
from spearfl.algorithms.masks import MaskOptions, token_char_spans, unlikelihood_mask
from spearfl.algorithms.registry import register_algorithm
from spearfl.algorithms.rollout import RolloutResult, Trace, sample_prompts, self_play_rollout
from spearfl.algorithms.scoring import (
    align_flags,
    build_batch,
    completion_logits,
    forward_passes,
    vocab_size,
)
from spearfl.algorithms.training import (
    ema_blend,
    mean,
    round_lr,
    run_local_steps,
    sample_batch,
    training_mode,
)
from spearfl.config import OptimConfig, Section, setting
from spearfl.models.policy import Policy
from spearfl.tasks.base import Example


@dataclass(frozen=True)
class LossWeights:
    win: float
    lose: float
    anchor: float
    margin: float


def cap_losses(losses: list[Trace], num_wins: int, ratio: float, rng: random.Random) -> list[Trace]:
    """At most ``ratio * num_wins`` losses, chosen at random (SPEC §3 step 8)."""
    cap = int(math.floor(ratio * num_wins))
    if len(losses) <= cap:
        return losses
    return rng.sample(losses, cap)


@dataclass
class SpearConfig(Section, section="spear"):
    """SPEAR's loss weights and which tokens of a wrong answer the unlikelihood term reads."""

    lambda_win: float = setting(1.0, doc="weight of maximum likelihood on the wins", ge=0)
    lambda_lose: float = setting(
        0.1, doc="weight of the unlikelihood term on the losses (0: feedback-SFT)", ge=0
    )
    lambda_anchor: float = setting(
        0.0, doc="weight of the L2 pull towards the adapter received this round", ge=0
    )
    unlikelihood_margin: float = setting(
        0.3, doc="a loss token is pushed down only while its probability is above this", ge=0, lt=1
    )
    ema_decay: float = setting(
        0.0, doc="share of the received adapter blended into the trained one (0: none)", ge=0, lt=1
    )
    ul_answer_only: bool = setting(
        False, doc="penalise only the answer's tokens (the option it names), not the reasoning"
    )
    ul_tail_tokens: int = setting(
        0, doc="penalise only the last N tokens of a wrong answer (0: every token)", ge=0
    )
    ul_skip_math_ops: bool = setting(
        False, doc="leave digits and arithmetic symbols out of the penalised tokens"
    )
    max_lose_ratio: float = setting(
        2.0, doc="at most this many losses per win are kept, drawn at random", ge=0
    )


@register_algorithm("spear", SpearConfig, human_feedback=True)
class SpearUpdate(ClientAlgorithm):
    METRIC_MEANINGS = {
        "n_eff": "the wins trained on (at least 1); without a win, the prompts answered, and the "
        "received adapter goes back unchanged (0 for judgements from the device's page, which "
        "wait for a round with a win)",
        "wins": "right first answers and right revisions, each paired with the original prompt",
        "losses": "wrong answers pushed down by unlikelihood, after the cap of "
        "spear.max_lose_ratio per win",
    }

    def weights(self) -> LossWeights:
        s = self.cfg.spear
        return LossWeights(s.lambda_win, s.lambda_lose, s.lambda_anchor, s.unlikelihood_margin)

    # ------------------------------------------------------------------ phase 1
    def rollout(self, examples: Sequence[Example], ctx: RoundContext) -> RolloutResult:
        """Self-play against a live provider: answer, ask, revise the wrong ones (SPEC §3)."""
        chosen = sample_prompts(examples, self.cfg.fl.local_rollout_steps, ctx.rng("prompts"))
        fb = self.cfg.feedback
        return self_play_rollout(
            self.policy,
            self.task,
            self.provider,
            chosen,
            self.cfg.gen,
            revise=fb.provider != "verdict_only",
            hints=fb.hints,
            skip_bad_rows=self.cfg.data.skip_bad_rows,
        )

    # ------------------------------------------------------------------ phase 2
    def loss_flags(self, trace: Trace) -> list[bool]:
        s = self.cfg.spear
        options = MaskOptions(
            tail_tokens=s.ul_tail_tokens,
            answer_only=s.ul_answer_only,
            skip_math_ops=s.ul_skip_math_ops,
            protect_marker=self.task.answer_marker is not None,
        )
        spans = token_char_spans(self.policy.tokenizer, trace.completion_ids)
        text = self.policy.tokenizer.decode(list(trace.completion_ids), skip_special_tokens=True)
        # A question typed on the page has no options to find the answer among: whole answer.
        answer_only = s.ul_answer_only and bool(trace.example.options)
        answer = self.task.answer_span(trace.example, text) if answer_only else None
        return unlikelihood_mask(trace.completion_ids, text, spans, answer, options)

    def update(
        self,
        global_adapter: dict[str, torch.Tensor],
        examples: Sequence[Example],
        ctx: RoundContext,
    ) -> ClientUpdateResult:
        self.policy.set_adapter(global_adapter)
        # A provider that judged before the round (people on the device's page) hands over its
        # traces and keeps its store open only for this block; a live one is asked in rollout.
        with self.provider.judged(self.policy, examples, ctx) as judged:
            rollout = judged.result if judged else self.rollout(examples, ctx)
            result = self.train_on(rollout, global_adapter, ctx, judged_before=bool(judged))
            if judged and result.metrics["trained"]:
                judged.mark_used()  # interactions a round trained on are not used again
            return result

    def train_on(
        self,
        rollout: RolloutResult,
        global_adapter: dict[str, torch.Tensor],
        ctx: RoundContext,
        judged_before: bool,
    ) -> ClientUpdateResult:
        """Phase 2 on the round's wins and losses (SPEC §3 steps 8-10)."""
        policy = self.policy
        metrics = dict(rollout.stats)
        n = max(1, metrics["num_rollouts"])
        metrics["y0_accuracy"] = metrics["y0_correct"] / n
        metrics["y0_valid_rate"] = metrics["y0_valid"] / n
        metrics["losses_before_cap"] = len(rollout.losses)
        lr = round_lr(self.cfg, ctx.round_num, ctx.total_rounds)
        metrics["lr"] = lr
        wins = rollout.wins
        if not wins:
            # Pure unlikelihood with nothing to reinforce degrades the model: skip training.
            metrics.update(
                wins=0,
                losses=len(rollout.losses),
                train_seconds=0.0,
                steps=0,
                skipped_steps=0,
                trained=0,
            )
            # A device's judged answers wait for a round with a win, and until then the device
            # must not pull the average towards the adapter it received: weight 0.
            weight = 0.0 if judged_before else float(metrics["num_rollouts"])
            return ClientUpdateResult(global_adapter, weight, metrics)

        losses = cap_losses(
            rollout.losses, len(wins), self.cfg.spear.max_lose_ratio, ctx.rng("cap")
        )
        start = time.perf_counter()
        loss_flags = [self.loss_flags(t) for t in losses]
        rng = ctx.rng("batches")
        step = SpearMicroStep(
            policy, self.weights(), self.cfg.optim, wins, losses, loss_flags, global_adapter, rng
        )
        with training_mode(policy.model):
            stats = run_local_steps(policy.trainable(), lr=lr, cfg=self.cfg, micro_step=step)
        adapter = ema_blend(policy.get_adapter(), global_adapter, self.cfg.spear.ema_decay)
        metrics.update(
            wins=len(wins),
            losses=len(losses),
            mean_loss=mean(stats.losses),
            mean_win_loss=mean(step.win_parts),
            mean_lose_loss=mean(step.lose_parts),
            steps=stats.steps,
            skipped_steps=stats.skipped,
            prox_penalty=stats.prox_penalty,
            train_seconds=time.perf_counter() - start,
            trained=1,
        )
        return ClientUpdateResult(adapter, float(max(1, len(wins))), metrics)


class SpearMicroStep:
    """One micro-step per call: ``batch_size`` wins and ``batch_size`` losses drawn with ``rng``,
    MLE on the wins and unlikelihood on the losses' flagged tokens, in forward passes of
    ``optim.micro_batch_size`` rows (``scoring.forward_passes``).

    ``run_local_steps`` calls it with the loss scale; each call back-propagates and returns the
    micro-batch's unscaled loss, and appends its unweighted win and lose parts to
    ``win_parts`` and ``lose_parts``.
    """

    def __init__(
        self,
        policy: Policy,
        weights: LossWeights,
        optim: OptimConfig,
        wins: Sequence[Trace],
        losses: Sequence[Trace],
        loss_flags: Sequence[Sequence[bool]],
        reference: Mapping[str, torch.Tensor],
        rng: random.Random,
    ) -> None:
        self.policy, self.weights = policy, weights
        self.batch_size, self.rows_per_pass = optim.batch_size, optim.micro_batch_size
        self.wins, self.losses, self.loss_flags = wins, losses, loss_flags
        self.reference, self.rng = reference, rng
        self.vocab = vocab_size(policy.model)
        self.params = policy.trainable()
        self.win_parts: list[float] = []
        self.lose_parts: list[float] = []

    def __call__(self, scale: float) -> float:
        policy, w = self.policy, self.weights
        wins, losses = self.wins, self.losses
        win_idx = sample_batch(range(len(wins)), self.batch_size, self.rng) if w.win > 0 else []
        loss_idx = sample_batch(range(len(losses)), self.batch_size, self.rng) if w.lose > 0 else []
        eos = policy.eos_id
        rows = [(wins[i].prompt_ids, (*wins[i].completion_ids, eos)) for i in win_idx]
        rows += [(losses[i].prompt_ids, losses[i].completion_ids) for i in loss_idx]
        flags = [[True] * len(c) for _, c in rows[: len(win_idx)]]
        flags += [self.loss_flags[i] for i in loss_idx]
        is_win = [True] * len(win_idx) + [False] * len(loss_idx)
        conf = torch.tensor([losses[i].confidence for i in loss_idx] or [0.0])
        # Token counts of the whole micro-batch, so chunking for memory keeps the same maths.
        n_win_tokens = sum(len(rows[j][1]) for j in range(len(win_idx)))
        n_loss_tokens = sum(sum(f) for f in flags[len(win_idx) :])
        total = 0.0
        win_sum = lose_sum = 0.0
        for chunk in forward_passes([len(c) for _, c in rows], self.rows_per_pass, self.vocab):
            batch = build_batch(rows[chunk], policy.tokenizer.pad_token_id, policy.device)
            mask = align_flags(flags[chunk], batch.targets.shape[1], policy.device)
            logp = target_logprobs(completion_logits(policy.model, batch), batch.targets)
            win_rows = torch.tensor(is_win[chunk], device=policy.device)
            loss = logp.new_zeros(())
            if win_rows.any() and n_win_tokens:
                lw = mle_loss(logp[win_rows], mask[win_rows], n_win_tokens)
                loss = loss + w.win * lw
                win_sum += float(lw.detach())
            if (~win_rows).any() and n_loss_tokens:
                # Normalised by the micro-batch's loss tokens and weighted by its mean
                # confidence, whichever forward pass a row falls in.
                lose = ~win_rows
                ll = unlikelihood_loss(logp[lose], mask[lose], conf, w.margin, n_loss_tokens)
                loss = loss + w.lose * ll
                lose_sum += float(ll.detach())
            if chunk.start == 0 and w.anchor > 0:
                la = anchor_loss(self.params, self.reference)
                loss = loss + w.anchor * la
            (loss * scale).backward()
            total += float(loss.detach())
        self.win_parts.append(win_sum)
        self.lose_parts.append(lose_sum)
        return total
