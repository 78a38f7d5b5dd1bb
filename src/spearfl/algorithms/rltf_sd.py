"""RLTF-SD baseline (SPEC §4; Song et al. 2026): two-turn RL from text feedback + self-distillation.

Turn 0 samples N answers ``y0`` per prompt ``x0``; wrong ones (all of them without early
termination) get the provider's feedback, a revision prompt ``x1`` and a revised answer ``y1``.
The policy is trained with REINFORCE-style group baselines on both turns and, as the
self-distillation term, on the revisions scored under the *original* prompt, so what the
feedback taught is learned without the feedback in context.

Conventions (all sequence log-probs are mean token log-probs, as in GRPO):

- Early termination: a correct ``y0`` skips turn 1 with ``r1 = r0``; for the self-distillation
  term its ``y1`` is ``y0`` itself (the answer it would have kept), so a correct first answer
  is reinforced with advantage ``r0 - b0``. It has no ``x1``, so it adds nothing to the turn-1
  RL term (zero, still counted in that term's mean: an episode's loss is the sum over the
  turns it took, averaged over episodes).
- The k3-KL to the round's starting adapter goes with each RL log-prob term (turns 0 and 1),
  inside ``L_RL``; the self-distillation term has none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from spearfl.algorithms.policy_gradient import (
    OnlineRLUpdate,
    RoundState,
    k3_terms,
    reference_sequence_logprobs,
    scored_row,
    sequence_logprobs,
)
from spearfl.algorithms.rollout import BARE_HINT, sample_prompts
from spearfl.tasks.base import Example

CORRECT_HINT = "That is right."
"""Feedback for a correct first answer when early termination is off (turn 1 still runs)."""


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
    """``r1 - b1`` where turn 1 ran, 0 elsewhere: weights ``log π(y1 | x1)``."""


def rltf_advantages(
    r0: torch.Tensor, r1: torch.Tensor, revised: torch.Tensor, gamma: float
) -> RLTFAdvantages:
    """Returns ``R = r0 + γ r1``, group baselines and advantages from ``[P, N]`` rewards.

    ``r1`` is read only where ``revised`` is true; elsewhere (early termination) ``r1 = r0``.
    """
    r0 = r0.to(torch.float32)
    revised = revised.to(torch.bool)
    r1 = torch.where(revised, r1.to(torch.float32), r0)
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
        turn1=torch.where(revised, r1 - b1, torch.zeros_like(r1)),
    )


@dataclass(frozen=True)
class RLTFRowWeights:
    """Coefficients of each sequence's log-prob and k3 term in the loss, flat ``[P * N]``.

    ``loss = Σ -y0_x0·lp(y0|x0) - y1_x1·lp(y1|x1) - y1_x0·lp(y1|x0)
           + kl_y0_x0·k3(y0|x0) + kl_y1_x1·k3(y1|x1)``
    equals ``sd_coeff·L_SD + rl_coeff·L_RL`` with every mean taken over the P·N samples.
    """

    y0_x0: torch.Tensor
    y1_x1: torch.Tensor
    y1_x0: torch.Tensor
    kl_y0_x0: torch.Tensor
    kl_y1_x1: torch.Tensor


def rltf_row_weights(
    adv: RLTFAdvantages,
    revised: torch.Tensor,
    sd_coeff: float,
    rl_coeff: float,
    beta_kl: float,
) -> RLTFRowWeights:
    """Spread ``sd_coeff·L_SD + rl_coeff·L_RL`` over the sequences actually scored.

    A sample without turn 1 has ``y1 = y0``, so its self-distillation weight joins its
    ``(y0, x0)`` row instead of scoring the same sequence twice.
    """
    rev = revised.flatten().to(torch.float32)
    count = rev.numel()
    sd = adv.sd.flatten() * sd_coeff / count
    kl = torch.full_like(rev, rl_coeff * beta_kl / count)
    return RLTFRowWeights(
        y0_x0=rl_coeff * adv.turn0.flatten() / count + sd * (1.0 - rev),
        y1_x1=rl_coeff * adv.turn1.flatten() / count * rev,
        y1_x0=sd * rev,
        kl_y0_x0=kl,
        kl_y1_x1=kl * rev,
    )


class RLTFSDUpdate(OnlineRLUpdate):
    name = "rltf_sd"

    def hint(self, example: Example, attempt: str) -> str:
        """The provider's partial hint; a bare "wrong" without hints or without a provider."""
        fb = self.cfg.feedback
        if not fb.hints or fb.provider == "none":
            return BARE_HINT
        feedback = self.provider.feedback(example, attempt)
        if feedback.correct:
            return CORRECT_HINT
        return feedback.hint or BARE_HINT

    def micro_step(self, state: RoundState, scale: float) -> float:
        cfg, policy, gen = self.cfg.rltf_sd, self.policy, self.cfg.gen
        micro = self.cfg.optim.micro_batch_size
        n = cfg.num_generations
        eos = policy.eos_id

        started = time.perf_counter()
        chosen = sample_prompts(state.examples, self.cfg.optim.batch_size, state.rng)
        owners = [ex for ex in chosen for _ in range(n)]
        x0 = [p for p in self.encode_prompts(chosen) for _ in range(n)]
        first = state.generator(x0, gen.max_new_tokens_y0)
        r0 = [self.provider.check(ex, y.text) for ex, y in zip(owners, first)]
        revise = [i for i, ok in enumerate(r0) if not (cfg.early_termination and ok)]
        x1 = [
            policy.encode(
                self.task.revision_messages(
                    owners[i], first[i].text, self.hint(owners[i], first[i].text)
                )
            )
            for i in revise
        ]
        second = state.generator(x1, gen.max_new_tokens_y1)
        r1_revised = [self.provider.check(owners[i], y.text) for i, y in zip(revise, second)]
        state.rollout_seconds += time.perf_counter() - started

        total = len(first)
        revised = torch.zeros(total, dtype=torch.bool)
        revised[revise] = True
        r1 = torch.zeros(total)
        r1[revise] = torch.tensor([float(ok) for ok in r1_revised])
        adv = rltf_advantages(
            torch.tensor([float(ok) for ok in r0]).view(len(chosen), n),
            r1.view(len(chosen), n),
            revised.view(len(chosen), n),
            cfg.gamma,
        )
        self._count(state, r0, revise, r1_revised, adv)
        w = rltf_row_weights(adv, revised, cfg.sd_coeff, cfg.rl_coeff, cfg.beta_kl)

        # Rows: (x0, y0) for every sample, then (x1, y1) and (x0, y1) for each revision.
        rows = [scored_row(p, y, eos) for p, y in zip(x0, first)]
        rows += [scored_row(p, y, eos) for p, y in zip(x1, second)]
        rows += [scored_row(x0[i], y, eos) for i, y in zip(revise, second)]
        idx = torch.tensor(revise, dtype=torch.long)
        coef = torch.cat([w.y0_x0, w.y1_x1[idx], w.y1_x0[idx]])
        klw = torch.cat([w.kl_y0_x0, w.kl_y1_x1[idx], torch.zeros(len(revise))])
        # A sequence with neither weight adds nothing: don't run it.
        keep = [k for k in range(len(rows)) if coef[k] != 0 or klw[k] != 0]
        if not keep:
            return 0.0
        rows = [rows[k] for k in keep]
        coef = coef[keep].to(policy.device)
        klw = klw[keep].to(policy.device)
        ref = torch.zeros_like(coef)
        kl_rows = [k for k in range(len(rows)) if klw[k] != 0]
        if kl_rows:
            to_score = [rows[k] for k in kl_rows]
            ref[kl_rows] = (
                sequence_logprobs(policy, to_score, micro)
                if state.at_reference
                else reference_sequence_logprobs(policy, state.reference, to_score, micro)
            )

        def row_loss(logp: torch.Tensor, part: slice) -> torch.Tensor:
            return -coef[part] * logp + klw[part] * k3_terms(logp, ref[part])

        return self.backward_rows(rows, row_loss, scale)

    @staticmethod
    def _count(
        state: RoundState,
        r0: list[bool],
        revise: list[int],
        r1_revised: list[bool],
        adv: RLTFAdvantages,
    ) -> None:
        first_right = sum(r0)
        second_right = sum(r1_revised)
        fixed = sum(ok for i, ok in zip(revise, r1_revised) if not r0[i])
        state.counts.update(
            num_rollouts=len(r0),
            y0_correct=first_right,
            reward_sum=float(first_right),
            return_sum=float(adv.returns.sum()),
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
            "revisions_attempted": float(c["revisions_attempted"]),
            "revisions_successful": float(c["revisions_successful"]),
            "turn1_samples": float(c["turn1_samples"]),
            "turn1_accuracy": c["turn1_correct"] / max(1.0, float(c["turn1_samples"])),
            "mean_return": c["return_sum"] / samples,
        }
