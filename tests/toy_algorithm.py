"""A whole algorithm in one file, as a user would write one: ``algorithm.module`` names this file.

``gold_sft`` trains by maximum likelihood on each prompt's gold answer: no generation, no
feedback. It is not a baseline anyone should use (it reads the answers); it is the smallest
complete algorithm, so the test of the extension points exercises only them: the config section,
the registration, the metrics record, one round through Flower and the comparison report.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from spearfl.algorithms.base import ClientAlgorithm, ClientUpdateResult, RoundContext
from spearfl.algorithms.logits import target_logprobs
from spearfl.algorithms.losses import mle_loss
from spearfl.algorithms.registry import register_algorithm
from spearfl.algorithms.scoring import build_batch, completion_logits
from spearfl.algorithms.training import (
    mean,
    round_lr,
    run_local_steps,
    sample_batch,
    training_mode,
)
from spearfl.config import Section, setting
from spearfl.models.policy import question_prompts
from spearfl.models.prompts import text_ids
from spearfl.tasks.base import Example


@dataclass
class GoldSFTConfig(Section, section="gold_sft"):
    """How many gold answers a micro-step reads, and how much they weigh."""

    prompts_per_step: int = setting(2, doc="gold answers per micro-step", ge=1)
    weight: float = setting(1.0, doc="scale of the likelihood loss", gt=0)


@register_algorithm("gold_sft", GoldSFTConfig)
class GoldSFTUpdate(ClientAlgorithm):
    """Maximum likelihood on ``Answer: <gold>`` for prompts drawn from the client's examples."""

    METRIC_MEANINGS = {
        "n_eff": "the client's examples",
        "wins": "gold answers trained on",
        "losses": "always 0: nothing is pushed down",
    }

    def gold_text(self, example: Example) -> str:
        marker = self.task.answer_marker
        return f"{marker} {example.gold}" if marker else example.gold

    def update(
        self,
        global_adapter: dict[str, torch.Tensor],
        examples: Sequence[Example],
        ctx: RoundContext,
    ) -> ClientUpdateResult:
        policy, section = self.policy, self.cfg.gold_sft
        policy.set_adapter(global_adapter)
        rng = ctx.rng("gold")
        trained_on = 0

        def micro_step(scale: float) -> float:
            nonlocal trained_on
            chosen = sample_batch(list(examples), section.prompts_per_step, rng)
            answers = [text_ids(policy.tokenizer, self.gold_text(ex)) for ex in chosen]
            prompts = question_prompts(policy, self.task, chosen)
            rows = [(p, (*a, policy.eos_id)) for p, a in zip(prompts, answers, strict=True)]
            batch = build_batch(rows, policy.tokenizer.pad_token_id, policy.device)
            logp = target_logprobs(completion_logits(policy.model, batch), batch.targets)
            loss = section.weight * mle_loss(logp, batch.target_mask)
            (loss * scale).backward()
            trained_on += len(rows)
            return float(loss.detach())

        start = time.perf_counter()
        lr = round_lr(self.cfg, ctx.round_num, ctx.total_rounds)
        with training_mode(policy.model):
            stats = run_local_steps(policy.trainable(), lr=lr, cfg=self.cfg, micro_step=micro_step)
        metrics = {
            "tokens_generated": 0,
            "completions_generated": 0,
            "rollout_seconds": 0.0,
            "train_seconds": time.perf_counter() - start,
            "y0_accuracy": 0.0,
            "wins": trained_on,
            "losses": 0,
            "trained": stats.steps > 0,
            "mean_loss": mean(stats.losses),
        }
        return ClientUpdateResult(policy.get_adapter(), float(len(examples)), metrics)
