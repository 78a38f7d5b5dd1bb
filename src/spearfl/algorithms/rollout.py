"""SPEAR phase 1, the self-play rollout (SPEC §3 steps 1-6), shared with feedback-SFT.

One sampled answer per prompt; wrong answers get up to ``num_revisions`` feedback-guided
revisions; the outcome is committed as wins (maximum likelihood) and confidence-weighted
losses (unlikelihood).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from spearfl.config import GenConfig
from spearfl.feedback.base import FeedbackProvider
from spearfl.models.generation import Completion, answer_stop
from spearfl.models.policy import Policy, fit_prompts, question_prompts
from spearfl.tasks.base import Example, Task

CONFIDENCE_FIXED = 1.0
"""A loss whose prompt a revision fixed: the answer was surely the wrong one."""
CONFIDENCE_UNFIXED = 0.5
"""A loss never fixed: wrong, but with no better answer to contrast it with."""
BARE_HINT = "That is not right."


@dataclass(frozen=True)
class Trace:
    """A training pair: the *original* prompt and a completion the model produced."""

    example: Example
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    text: str
    confidence: float = 1.0


@dataclass
class RolloutResult:
    wins: list[Trace] = field(default_factory=list)
    losses: list[Trace] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)


def sample_prompts(examples: Sequence[Example], count: int, rng: random.Random) -> list[Example]:
    """``count`` examples without replacement (all of them if there are fewer)."""
    if count >= len(examples):
        picked = list(examples)
        rng.shuffle(picked)
        return picked
    return rng.sample(list(examples), count)


@dataclass
class CountingGenerator:
    """Generation settings bound to a policy and a task, counting every completion and token
    generated and every prompt left out for being too long.

    Completions stop at EOS, at their own budget (``max_new_tokens`` capped by what
    ``model.max_seq_len`` leaves after the prompt), or once the task's answer line is complete:
    the same rule as evaluation (:func:`spearfl.models.generation.answer_stop`).
    """

    policy: Policy
    gen: GenConfig
    task: Task
    skip_bad_rows: bool = False
    tokens: int = 0
    completions: int = 0
    skipped_prompts: int = 0

    def __post_init__(self) -> None:
        self.stop_when = answer_stop(self.policy.tokenizer, self.task)

    def fit(
        self, prompts: Sequence[Sequence[int]], examples: Sequence[Example], kind: str = "question"
    ) -> list[int]:
        """Indices of the prompts short enough to answer; the others raise an error naming the
        example, or with ``data.skip_bad_rows`` are counted in ``skipped_prompts``."""
        kept = fit_prompts(
            prompts,
            examples,
            max_seq_len=self.policy.max_seq_len,
            task_name=self.task.name,
            kind=kind,
            skip=self.skip_bad_rows,
        )
        self.skipped_prompts += len(prompts) - len(kept)
        return kept

    def __call__(self, prompts: list[list[int]], max_new_tokens: int) -> list[Completion]:
        if not prompts:
            return []
        outs = self.policy.generate(
            prompts,
            max_new_tokens=max_new_tokens,
            do_sample=self.gen.do_sample,
            temperature=self.gen.temperature,
            top_p=self.gen.top_p,
            batch_size=self.gen.rollout_batch_size,
            stop_when=self.stop_when,
        )
        self.tokens += sum(o.num_generated for o in outs)
        self.completions += len(outs)
        return outs


def self_play_rollout(
    policy: Policy,
    task: Task,
    provider: FeedbackProvider,
    examples: Sequence[Example],
    gen: GenConfig,
    *,
    revise: bool = True,
    hints: bool = True,
    skip_bad_rows: bool = False,
) -> RolloutResult:
    """Answer each prompt once, revise wrong answers with feedback, commit wins and losses.

    ``revise=False`` is the verdicts-only setting: every wrong answer is a loss with
    confidence 0.5. ``hints=False`` keeps the revisions but tells them only "wrong".
    A prompt too long for ``model.max_seq_len`` is an error, or with ``skip_bad_rows`` left
    out and counted (``skipped_prompts``): its question is not answered, its revision or
    format fix not tried.
    """
    start = time.perf_counter()
    generator = CountingGenerator(policy, gen, task, skip_bad_rows)
    prompts = question_prompts(policy, task, examples)
    kept = generator.fit(prompts, examples)
    examples, prompts = [examples[i] for i in kept], [prompts[i] for i in kept]
    first = generator(prompts, gen.max_new_tokens_y0)
    result = RolloutResult()
    stats = {
        "num_rollouts": len(examples),
        "y0_correct": 0,
        "y0_valid": 0,
        "revisions_attempted": 0,
        "revisions_successful": 0,
        "format_fixes_attempted": 0,
        "format_fixes_kept": 0,
    }
    wrong: list[int] = []
    needs_fix: list[int] = []
    for i, (ex, y0) in enumerate(zip(examples, first)):
        stats["y0_valid"] += task.extract_answer(ex, y0.text) is not None
        if provider.check(ex, y0.text):
            stats["y0_correct"] += 1
            if gen.format_fix and not task.is_well_formatted(ex, y0.text):
                needs_fix.append(i)
            else:
                result.wins.append(Trace(ex, tuple(prompts[i]), y0.completion_ids, y0.text))
        else:
            wrong.append(i)

    # Format-fix: one rewrite without feedback; the rewrite is kept only if still correct,
    # otherwise the original (correct) answer stays the win. Never a loss.
    if needs_fix:
        fixes = _format_fixes(policy, task, gen, generator, examples, first, needs_fix)
        stats["format_fixes_attempted"] = sum(fix is not None for fix in fixes)
        for i, fix in zip(needs_fix, fixes):
            chosen = first[i]
            if fix is not None and provider.check(examples[i], fix.text):
                chosen = fix
                stats["format_fixes_kept"] += 1
            result.wins.append(
                Trace(examples[i], tuple(prompts[i]), chosen.completion_ids, chosen.text)
            )

    fixed: dict[int, Completion] = {}
    if revise and gen.num_revisions > 0:
        fixed, attempted = _revisions(
            policy, task, provider, gen, generator, examples, first, wrong, hints
        )
        stats["revisions_attempted"] = attempted
        stats["revisions_successful"] = len(fixed)

    for i in wrong:
        win, loss = _wrong_answer_traces(examples[i], prompts[i], first[i], fixed.get(i))
        if win is not None:
            result.wins.append(win)
        result.losses.append(loss)

    stats["tokens_generated"] = generator.tokens
    stats["completions_generated"] = generator.completions
    stats["skipped_prompts"] = generator.skipped_prompts
    stats["rollout_seconds"] = time.perf_counter() - start
    result.stats = stats
    return result


def _format_fixes(
    policy: Policy,
    task: Task,
    gen: GenConfig,
    generator: CountingGenerator,
    examples: Sequence[Example],
    first: Sequence[Completion],
    needs_fix: Sequence[int],
) -> list[Completion | None]:
    """One rewrite of each answer ``needs_fix`` names, without feedback; None where the
    format-fix prompt is too long to answer."""
    fix_prompts = [
        policy.encode(task.format_fix_messages(examples[i], first[i].text)) for i in needs_fix
    ]
    fits = generator.fit(fix_prompts, [examples[i] for i in needs_fix], "format-fix")
    fixes: list[Completion | None] = [None] * len(needs_fix)
    outs = generator([fix_prompts[k] for k in fits], gen.max_new_tokens_y0)
    for k, fix in zip(fits, outs):
        fixes[k] = fix
    return fixes


def _revisions(
    policy: Policy,
    task: Task,
    provider: FeedbackProvider,
    gen: GenConfig,
    generator: CountingGenerator,
    examples: Sequence[Example],
    first: Sequence[Completion],
    wrong: Sequence[int],
    hints: bool,
) -> tuple[dict[int, Completion], int]:
    """Up to ``gen.num_revisions`` feedback-guided revisions of each wrong answer, each from
    the last one, until one is right: the right revisions by answer index, and the number of
    revisions tried."""
    fixed: dict[int, Completion] = {}
    attempted = 0
    current = {i: first[i].text for i in wrong}
    active = list(wrong)
    for _ in range(gen.num_revisions):
        if not active:
            break
        rev_prompts = []
        for i in active:
            ex = examples[i]
            hint = provider.feedback(ex, current[i]).hint if hints else BARE_HINT
            rev_prompts.append(
                policy.encode(task.revision_messages(ex, current[i], hint or BARE_HINT))
            )
        # A revision prompt too long to answer ends that prompt's revisions (a loss).
        fits = generator.fit(rev_prompts, [examples[i] for i in active], "revision")
        active, rev_prompts = [active[k] for k in fits], [rev_prompts[k] for k in fits]
        outs = generator(rev_prompts, gen.max_new_tokens_y1)
        attempted += len(active)
        still = []
        for i, out in zip(active, outs):
            if provider.check(examples[i], out.text):
                fixed[i] = out
            else:
                current[i] = out.text
                still.append(i)
        active = still
    return fixed, attempted


def _wrong_answer_traces(
    example: Example, prompt: Sequence[int], first: Completion, fixed: Completion | None
) -> tuple[Trace | None, Trace]:
    """A wrong first answer's win (its right revision, if any) and loss (the answer itself,
    surer to be the wrong one once a revision fixed it)."""
    prompt_ids = tuple(prompt)
    if fixed is None:
        return None, Trace(
            example, prompt_ids, first.completion_ids, first.text, CONFIDENCE_UNFIXED
        )
    # The revision is paired with the original prompt: learn to answer without feedback.
    win = Trace(example, prompt_ids, fixed.completion_ids, fixed.text)
    return win, Trace(example, prompt_ids, first.completion_ids, first.text, CONFIDENCE_FIXED)
