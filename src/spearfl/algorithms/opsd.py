"""OPSD baseline, On-Policy Self-Distillation (SPEC §4).

The student answers each sampled prompt once, as SPEAR's first attempt does. The teacher is the
same model with the current adapter, run without gradient, reading the task's privileged text
(gold answer, solution, facts) in a "Reference:" paragraph before the question. Each micro-step
pulls the student's next-token distributions on its own completions towards the teacher's:
token-level KL(teacher ‖ student) at temperature T, scaled by T². This is what SPEAR avoids:
ground truth in the model's context.

``n_eff`` is the number of rollouts with a non-empty answer: every such completion carries a
distillation signal, right or wrong, so there is no analogue of SPEAR's win count. The KL covers
the tokens the student wrote, not the position where it stopped (``distill.distill_eos``): with
the gold answer in its context, the teacher does not want to stop after a wrong answer, and
distilling that decision taught the student never to stop.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from spearfl.algorithms.base import ClientAlgorithm, ClientUpdateResult, RoundContext
from spearfl.algorithms.losses import anchor_loss, distill_kl
from spearfl.algorithms.registry import register_algorithm
from spearfl.algorithms.rollout import CountingGenerator, Trace, sample_prompts
from spearfl.algorithms.scoring import (
    build_batch,
    completion_logits,
    forward_passes,
    vocab_size,
)
from spearfl.algorithms.training import (
    mean,
    round_lr,
    run_local_steps,
    sample_batch,
    training_mode,
)
from spearfl.config import Config, Section, setting
from spearfl.models.policy import Policy, question_prompts
from spearfl.tasks.base import PLAIN, Example, Message

REFERENCE_LABEL = "Reference:"


def with_reference(messages: Sequence[Message], privileged: str) -> list[Message]:
    """``messages`` with a "Reference: …" paragraph opening the last user turn, in its chat
    and its base-model wording alike."""
    convo = [dict(m) for m in messages]
    last = max(i for i, m in enumerate(convo) if m["role"] == "user")
    for key in ("content", PLAIN):
        if key in convo[last]:
            convo[last][key] = f"{REFERENCE_LABEL} {privileged}\n\n{convo[last][key]}"
    return convo


@dataclass
class DistillConfig(Section, section="distill"):
    """OPSD's distillation: the teacher is the same model with privileged text in its prompt."""

    temperature: float = setting(2.0, doc="T of the token-level KL (scaled by T squared)", gt=0)
    kl_weight: float = setting(1.0, doc="weight of KL(teacher || student)", ge=0)
    anchor_weight: float = setting(
        0.0, doc="weight of the L2 pull towards the adapter received this round", ge=0
    )
    priv_max_chars: int = setting(
        2000, doc="the privileged text in the teacher's prompt is cut at this many characters", ge=1
    )
    # Keys of the paper's layout that OPSD as SPEC §4 defines it has no use for: only their
    # defaults are accepted, since any other value would silently change nothing.
    feedback_max_chars: int = setting(
        800,
        ge=1,
        unused="OPSD's teacher reads the task's privileged text (cut at distill.priv_max_chars), "
        "never the feedback provider's hints, so there is no feedback to cut",
    )
    num_demos: int = setting(
        0,
        ge=0,
        unused="OPSD (SPEC §4) puts no worked demonstrations in the teacher's context; "
        "adding them would make it a different baseline",
    )
    demo_max_chars: int = setting(
        500, ge=1, unused="there are no demonstrations to cut (distill.num_demos is always 0)"
    )
    # Off: after a wrong answer the teacher, who read the gold answer, wants to go on, and
    # matching it there teaches the student never to stop (measured: valid answers fell to 0%
    # in 3 rounds on the demo task).
    distill_eos: bool = setting(
        False, doc="also distill the position where the student stopped (its end of sequence)"
    )


@register_algorithm("opsd", DistillConfig)
class OPSDUpdate(ClientAlgorithm):
    """One sampled answer per prompt, then self-distillation from the privileged teacher."""

    METRIC_MEANINGS = {
        "n_eff": "the non-empty answers distilled",
        "wins": "right first answers (counted: OPSD distills every answer alike)",
        "losses": "wrong first answers (counted, not pushed down)",
    }

    def teacher_prompt(self, example: Example) -> list[int]:
        """The student's prompt with the privileged text (cut to ``priv_max_chars``) added."""
        privileged = self.task.privileged_text(example)[: self.cfg.distill.priv_max_chars]
        messages = with_reference(self.task.messages(example), privileged)
        return self.policy.encode(messages, self.task.assistant_prefix(example))

    def update(
        self,
        global_adapter: dict[str, torch.Tensor],
        examples: Sequence[Example],
        ctx: RoundContext,
    ) -> ClientUpdateResult:
        policy, task = self.policy, self.task
        policy.set_adapter(global_adapter)
        started = time.perf_counter()
        chosen = sample_prompts(examples, self.cfg.fl.local_rollout_steps, ctx.rng("prompts"))
        generator = CountingGenerator(policy, self.cfg.gen, task, self.cfg.data.skip_bad_rows)
        prompts = question_prompts(policy, task, chosen)
        kept = generator.fit(prompts, chosen)
        chosen, prompts = [chosen[i] for i in kept], [prompts[i] for i in kept]
        outs = generator(prompts, self.cfg.gen.max_new_tokens_y0)
        correct = [self.provider.check(ex, out.text) for ex, out in zip(chosen, outs)]
        # The KL covers the tokens the student wrote; its stop decision only with distill_eos.
        eos = (policy.eos_id,) if self.cfg.distill.distill_eos else ()
        traces = [
            Trace(ex, tuple(p), (*out.completion_ids, *(eos if out.finished else ())), out.text)
            for ex, p, out in zip(chosen, prompts, outs)
        ]
        traces = [t for t in traces if t.completion_ids]  # an empty answer has nothing to distill
        n = len(outs)
        lr = round_lr(self.cfg, ctx.round_num, ctx.total_rounds)
        metrics: dict[str, float] = {
            "num_rollouts": n,
            "y0_correct": sum(correct),
            "y0_accuracy": sum(correct) / max(1, n),
            "wins": sum(correct),
            "losses": n - sum(correct),
            "tokens_generated": generator.tokens,
            "completions_generated": generator.completions,
            "skipped_prompts": generator.skipped_prompts,
            "rollout_seconds": time.perf_counter() - started,
            "lr": lr,
        }
        if not traces:
            metrics.update(train_seconds=0.0, steps=0, skipped_steps=0, trained=0, mean_loss=0.0)
            return ClientUpdateResult(global_adapter, 0.0, metrics)

        started = time.perf_counter()
        teacher_prompts = [self.teacher_prompt(t.example) for t in traces]
        step = OPSDMicroStep(
            policy, self.cfg, traces, teacher_prompts, global_adapter, ctx.rng("batches")
        )
        with training_mode(policy.model):
            stats = run_local_steps(policy.trainable(), lr=lr, cfg=self.cfg, micro_step=step)
        metrics.update(
            mean_loss=mean(stats.losses),
            steps=stats.steps,
            skipped_steps=stats.skipped,
            prox_penalty=stats.prox_penalty,
            train_seconds=time.perf_counter() - started,
            trained=1,
        )
        return ClientUpdateResult(policy.get_adapter(), float(len(traces)), metrics)


class OPSDMicroStep:
    """One micro-step per call: KL on ``batch_size`` rollouts drawn with ``rng``, in forward
    passes of ``optim.micro_batch_size`` rows (a teacher pass and a student pass each).

    ``run_local_steps`` calls it with the loss scale; each call back-propagates and returns the
    micro-batch's unscaled loss.
    """

    def __init__(
        self,
        policy: Policy,
        cfg: Config,
        traces: Sequence[Trace],
        teacher_prompts: Sequence[Sequence[int]],
        reference: Mapping[str, torch.Tensor],
        rng: random.Random,
    ) -> None:
        self.policy, self.distill = policy, cfg.distill
        self.batch_size, self.rows_per_pass = cfg.optim.batch_size, cfg.optim.micro_batch_size
        self.traces, self.teacher_prompts = traces, teacher_prompts
        self.reference, self.rng = reference, rng
        self.vocab = vocab_size(policy.model)
        self.params = policy.trainable()

    def __call__(self, scale: float) -> float:
        policy, d, traces = self.policy, self.distill, self.traces
        pad = policy.tokenizer.pad_token_id
        idx = sample_batch(range(len(traces)), self.batch_size, self.rng)
        # Token count of the whole micro-batch, so chunking keeps the same maths.
        n_tokens = sum(len(traces[i].completion_ids) for i in idx)
        total = 0.0
        lengths = [len(traces[i].completion_ids) for i in idx]
        for span in forward_passes(lengths, self.rows_per_pass, self.vocab):
            chunk = idx[span]
            student = build_batch(
                [(traces[i].prompt_ids, traces[i].completion_ids) for i in chunk],
                pad,
                policy.device,
            )
            teacher = build_batch(
                [(self.teacher_prompts[i], traces[i].completion_ids) for i in chunk],
                pad,
                policy.device,
            )
            # The teacher is the current model without dropout and without gradient.
            policy.model.eval()
            with torch.no_grad():
                t_logits = completion_logits(policy.model, teacher)
            policy.model.train()
            s_logits = completion_logits(policy.model, student)
            part = distill_kl(t_logits, s_logits, student.target_mask, d.temperature)
            loss = d.kl_weight * part * float(student.target_mask.sum()) / max(1, n_tokens)
            if span.start == 0 and d.anchor_weight > 0:
                loss = loss + d.anchor_weight * anchor_loss(self.params, self.reference)
            (loss * scale).backward()
            total += float(loss.detach())
        return total
