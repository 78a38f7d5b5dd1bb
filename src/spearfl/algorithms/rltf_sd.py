"""RLTF-SD baseline (SPEC §4, §8; Song et al. 2026): RL from text feedback + self-distillation.

One rollout per client round: ``P = ⌊fl.local_rollout_steps / N⌋`` prompts ``x0`` (N =
``grpo.num_generations``), each answered N times (``y0``, reward ``r0``). Wrong answers (all of
them without early termination) get the provider's feedback, a revision prompt ``x1`` and one
revised answer ``y1`` (reward ``r1``). Each (prompt, sample) episode is a *trace* carrying three
terms, with group (prompt) baselines ``b0 = mean r0``, ``bR = mean R``, ``b1 = mean r1`` and
``R = r0 + γ r1``:

- self-distillation: ``(r1 - b0) · log π(y1 | x0)``: the revision scored under the *original*
  prompt, so what the feedback taught is learned without the feedback in context;
- RL turn 0: ``(R - bR) · log π(y0 | x0)``; RL turn 1: ``(r1 - b1) · log π(y1 | x1)``; each RL
  term with the k3-KL (weight ``grpo.beta_kl``) to the adapter received at the round's start.

An early-terminated (correct) sample keeps ``x1 = x0``, ``y1 = y0``, ``r1 = r0`` and still has
all three terms, all on the one sequence ``(x0, y0)``. Training runs ``local_train_steps ×
grad_accum_steps`` micro-steps, each drawing ``optim.batch_size`` traces from the round's
rollout; ``loss = sd_coeff · L_SD + rl_coeff · L_RL`` with every mean over the drawn traces.
Sequence log-probs are mean token log-probs, as in GRPO.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from spearfl.algorithms.grpo import GRPOConfig, grpo_rewards
from spearfl.algorithms.policy_gradient import (
    OnlineRLUpdate,
    RoundState,
    Row,
    k3_terms,
    scored_row,
    sequence_logprobs,
)
from spearfl.algorithms.registry import register_algorithm
from spearfl.algorithms.rollout import BARE_HINT, sample_prompts
from spearfl.algorithms.training import sample_batch
from spearfl.config import Section, setting
from spearfl.tasks.base import Example

CORRECT_HINT = "That is right."
"""Feedback for a correct first answer when early termination is off (turn 1 still runs)."""


def rollout_prompt_count(local_rollout_steps: int, group: int, num_examples: int) -> int:
    """``⌊local_rollout_steps / N⌋`` prompts, at least 1, at most the client's examples."""
    return min(num_examples, max(1, local_rollout_steps // group))


@dataclass(frozen=True)
class RLTFAdvantages:
    """Per-sample returns, per-group baselines and the three advantages, all ``[P, N]``."""

    r1: torch.Tensor
    """Turn-1 reward; ``r0`` where turn 1 was skipped."""
    returns: torch.Tensor
    b0: torch.Tensor
    b_return: torch.Tensor
    b1: torch.Tensor
    sd: torch.Tensor
    """``r1 - b0``: weights ``log π(y1 | x0)``."""
    turn0: torch.Tensor
    """``R - bR``: weights ``log π(y0 | x0)``."""
    turn1: torch.Tensor
    """``r1 - b1``: weights ``log π(y1 | x1)`` (``log π(y0 | x0)`` where turn 1 was skipped)."""


def rltf_advantages(
    r0: torch.Tensor, r1: torch.Tensor, revised: torch.Tensor, gamma: float
) -> RLTFAdvantages:
    """Returns ``R = r0 + γ r1``, group baselines and advantages from ``[P, N]`` rewards.

    ``r1`` is read only where ``revised`` is true; elsewhere (early termination) ``r1 = r0``.
    """
    r0 = r0.to(torch.float32)
    r1 = torch.where(revised.to(torch.bool), r1.to(torch.float32), r0)
    returns = r0 + gamma * r1
    b0 = r0.mean(-1, keepdim=True)
    b_return = returns.mean(-1, keepdim=True)
    b1 = r1.mean(-1, keepdim=True)
    return RLTFAdvantages(
        r1=r1,
        returns=returns,
        b0=b0,
        b_return=b_return,
        b1=b1,
        sd=r1 - b0,
        turn0=returns - b_return,
        turn1=r1 - b1,
    )


@dataclass(frozen=True)
class WeightedRow:
    """One sequence a trace scores and its weights in the trace's loss.

    The trace's loss is ``Σ -coef · log π(row) + kl · k3(log π(row), log π_ref(row))``.
    """

    row: Row
    coef: float
    kl: float


def trace_rows(
    first: Row,
    revision: Row | None,
    sd: float,
    turn0: float,
    turn1: float,
    *,
    sd_coeff: float,
    rl_coeff: float,
    beta_kl: float,
) -> tuple[WeightedRow, ...]:
    """The sequences of one trace with their weights in ``sd_coeff·L_SD + rl_coeff·L_RL``.

    ``first`` is ``(x0, y0)``, ``revision`` is ``(x1, y1)``, or None when early termination
    kept ``x1 = x0`` and ``y1 = y0``: then all three terms live on ``(x0, y0)`` and are scored
    as one row with summed coefficients (and both RL terms' KL).
    """
    kl = rl_coeff * beta_kl
    if revision is None:
        return (WeightedRow(first, sd_coeff * sd + rl_coeff * (turn0 + turn1), 2 * kl),)
    return (
        WeightedRow(first, rl_coeff * turn0, kl),
        WeightedRow(revision, rl_coeff * turn1, kl),
        WeightedRow((first[0], revision[1]), sd_coeff * sd, 0.0),
    )


@dataclass(frozen=True)
class RLTFTrace:
    """One (prompt, sample) episode: its rewards, advantages and the rows it is trained on."""

    group: int
    """Index of its prompt in the round's rollout (the group its baselines come from)."""
    first: Row
    """``(x0, y0)``."""
    revision: Row | None
    """``(x1, y1)``; None when turn 1 was skipped (early termination)."""
    r0: float
    r1: float
    episode_return: float
    """``R = r0 + γ r1``."""
    sd: float
    turn0: float
    turn1: float
    rows: tuple[WeightedRow, ...]


def build_traces(
    first: Sequence[Row],
    revisions: Mapping[int, Row],
    r0: torch.Tensor,
    r1: torch.Tensor,
    *,
    gamma: float,
    sd_coeff: float,
    rl_coeff: float,
    beta_kl: float,
) -> list[RLTFTrace]:
    """The traces of one rollout of P prompts × N samples.

    ``first[i]`` is ``(x0, y0)`` of sample ``i`` (prompt ``i // N``), ``revisions[i]`` its
    ``(x1, y1)`` where turn 1 ran; ``r0`` and ``r1`` are ``[P, N]`` rewards, ``r1`` read only
    where turn 1 ran.
    """
    prompts, group = r0.shape
    revised = torch.zeros(prompts * group, dtype=torch.bool)
    revised[list(revisions)] = True
    adv = rltf_advantages(r0, r1, revised.view(prompts, group), gamma)
    flat = [t.flatten().tolist() for t in (r0, adv.r1, adv.returns, adv.sd, adv.turn0, adv.turn1)]
    traces = []
    for i, (rew0, rew1, ret, sd, turn0, turn1) in enumerate(zip(*flat, strict=True)):
        revision = revisions.get(i)
        rows = trace_rows(
            first[i],
            revision,
            sd,
            turn0,
            turn1,
            sd_coeff=sd_coeff,
            rl_coeff=rl_coeff,
            beta_kl=beta_kl,
        )
        traces.append(
            RLTFTrace(i // group, first[i], revision, rew0, rew1, ret, sd, turn0, turn1, rows)
        )
    return traces


@dataclass(frozen=True)
class RLTFRollout:
    """The round's traces and the reference log-probs their KL terms compare with."""

    traces: list[RLTFTrace]
    reference: dict[Row, float]
    """Mean-token log-prob of every KL-weighted row under the adapter received this round."""


def merge_rows(traces: Sequence[RLTFTrace]) -> list[WeightedRow]:
    """The distinct sequences of a micro-batch, weights summed and divided by the trace count.

    Dividing by the number of traces makes the summed row losses the *mean* over traces; a
    sequence drawn twice (or shared by two terms) is scored once; rows without any weight
    are dropped.
    """
    summed: dict[Row, tuple[float, float]] = {}
    for trace in traces:
        for w in trace.rows:
            coef, kl = summed.get(w.row, (0.0, 0.0))
            summed[w.row] = (coef + w.coef, kl + w.kl)
    count = len(traces)
    return [
        WeightedRow(row, coef / count, kl / count)
        for row, (coef, kl) in summed.items()
        if coef != 0 or kl != 0
    ]


@dataclass
class RLTFSDConfig(Section, section="rltf_sd"):
    """RLTF-SD's own weights; its group size, KL weight and reward scale are GRPO's (SPEC §8)."""

    MOVED: ClassVar[Mapping[str, str]] = {
        "num_generations": "the paper's RLTF-SD reads its group size N from "
        "grpo.num_generations; set that instead",
        "beta_kl": "the paper's RLTF-SD reads its KL weight from grpo.beta_kl; set that instead",
    }

    gamma: float = setting(1.0, doc="discount of the revision's reward in the return", ge=0)
    sd_coeff: float = setting(0.1, doc="weight of the self-distillation term L_SD")
    rl_coeff: float = setting(1.0, doc="weight of the policy-gradient term L_RL")
    early_termination: bool = setting(
        True, doc="a right first answer is not revised (its turn 1 is skipped)"
    )


@register_algorithm("rltf_sd", GRPOConfig, RLTFSDConfig)
class RLTFSDUpdate(OnlineRLUpdate):
    METRIC_MEANINGS = {
        "n_eff": "the episodes (first answer and its revision) trained on",
        "wins": "right first answers plus right revisions",
        "losses": "wrong first answers plus wrong revisions",
    }

    def hint(self, example: Example, attempt: str) -> str:
        """The provider's partial hint; a bare "wrong" without hints or with verdicts only."""
        fb = self.cfg.feedback
        if not fb.hints or fb.provider == "verdict_only":
            return BARE_HINT
        feedback = self.provider.feedback(example, attempt)
        if feedback.correct:
            return CORRECT_HINT
        return feedback.hint or BARE_HINT

    def begin_round(self, state: RoundState) -> None:
        state.rollout = self.roll_out(state)

    def roll_out(self, state: RoundState) -> RLTFRollout:
        """The round's one rollout: P prompts × N samples, turn 1 for the wrong ones, traces."""
        cfg, grpo, gen, policy = self.cfg.rltf_sd, self.cfg.grpo, self.cfg.gen, self.policy
        n = grpo.num_generations

        started = time.perf_counter()
        count = rollout_prompt_count(self.cfg.fl.local_rollout_steps, n, len(state.examples))
        drawn = sample_prompts(state.examples, count, state.rng)
        chosen, fitting = self.fitting_prompts(state, drawn)
        count = len(chosen)
        owners = [ex for ex in chosen for _ in range(n)]
        x0 = [p for p in fitting for _ in range(n)]
        first = state.generator(x0, gen.max_new_tokens_y0)
        ok0 = [self.provider.check(ex, y.text) for ex, y in zip(owners, first)]
        revise = [i for i, ok in enumerate(ok0) if not (cfg.early_termination and ok)]
        x1 = [
            policy.encode(
                self.task.revision_messages(
                    owners[i], first[i].text, self.hint(owners[i], first[i].text)
                )
            )
            for i in revise
        ]
        # A revision prompt too long to answer is not tried: r1 = r0 there.
        fits = state.generator.fit(x1, [owners[i] for i in revise], "revision")
        revise, x1 = [revise[k] for k in fits], [x1[k] for k in fits]
        second = state.generator(x1, gen.max_new_tokens_y1)
        ok1_revised = [self.provider.check(owners[i], y.text) for i, y in zip(revise, second)]
        state.rollout_seconds += time.perf_counter() - started

        ok1 = list(ok0)  # r1 = r0 where turn 1 was skipped
        for i, ok in zip(revise, ok1_revised):
            ok1[i] = ok
        r0 = grpo_rewards(ok0, grpo.reward_scale, grpo.reward_clip)
        r1 = grpo_rewards(ok1, grpo.reward_scale, grpo.reward_clip)
        eos = policy.eos_id
        traces = build_traces(
            [scored_row(p, y, eos) for p, y in zip(x0, first)],
            {i: scored_row(p, y, eos) for i, p, y in zip(revise, x1, second)},
            r0.view(count, n),
            r1.view(count, n),
            gamma=cfg.gamma,
            sd_coeff=cfg.sd_coeff,
            rl_coeff=cfg.rl_coeff,
            beta_kl=grpo.beta_kl,
        )
        self._count(state, ok0, revise, ok1_revised, traces)

        # Before any optimiser step the adapter *is* the round's reference: score the KL rows
        # now, once, instead of swapping the reference in at every micro-step.
        kl_rows = list(dict.fromkeys(w.row for t in traces for w in t.rows if w.kl != 0))
        logps = sequence_logprobs(policy, kl_rows, self.cfg.optim.micro_batch_size)
        return RLTFRollout(traces, dict(zip(kl_rows, logps.tolist())))

    @staticmethod
    def _rollout(state: RoundState) -> RLTFRollout:
        if not isinstance(state.rollout, RLTFRollout):
            raise RuntimeError("RLTF-SD's micro-steps need the round's rollout: run begin_round")
        return state.rollout

    def micro_step(self, state: RoundState, scale: float) -> float:
        rollout = self._rollout(state)
        rows = merge_rows(sample_batch(rollout.traces, self.cfg.optim.batch_size, state.rng))
        if not rows:
            return 0.0
        device = self.policy.device
        coef = torch.tensor([w.coef for w in rows], device=device)
        klw = torch.tensor([w.kl for w in rows], device=device)
        ref = torch.tensor(
            [rollout.reference[w.row] if w.kl != 0 else 0.0 for w in rows], device=device
        )

        def row_loss(logp: torch.Tensor, part: slice) -> torch.Tensor:
            return -coef[part] * logp + klw[part] * k3_terms(logp, ref[part])

        return self.backward_rows([w.row for w in rows], row_loss, scale)

    def n_eff(self, state: RoundState) -> float:
        """The number of traces: FedAvg weighs the client by the episodes it trained on."""
        return float(len(self._rollout(state).traces))

    @staticmethod
    def _count(
        state: RoundState,
        r0: list[bool],
        revise: list[int],
        r1_revised: list[bool],
        traces: Sequence[RLTFTrace],
    ) -> None:
        first_right = sum(r0)
        second_right = sum(r1_revised)
        fixed = sum(ok for i, ok in zip(revise, r1_revised) if not r0[i])
        state.counts.update(
            num_rollouts=len(r0),
            rollout_prompts=len({t.group for t in traces}),
            y0_correct=first_right,
            reward_sum=sum(t.r0 for t in traces),
            return_sum=sum(t.episode_return for t in traces),
            wins=first_right + second_right,
            losses=len(r0) - first_right + len(revise) - second_right,
            revisions_attempted=sum(1 for i in revise if not r0[i]),
            revisions_successful=fixed,
            turn1_samples=len(revise),
            turn1_correct=second_right,
        )

    def extra_metrics(self, state: RoundState) -> dict[str, float]:
        c = state.counts
        samples = max(1.0, float(c["num_rollouts"]))
        return {
            "rollout_prompts": float(c["rollout_prompts"]),
            "revisions_attempted": float(c["revisions_attempted"]),
            "revisions_successful": float(c["revisions_successful"]),
            "turn1_samples": float(c["turn1_samples"]),
            "turn1_accuracy": c["turn1_correct"] / max(1.0, float(c["turn1_samples"])),
            "mean_return": c["return_sum"] / samples,
        }
