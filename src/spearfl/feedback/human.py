"""The ``human`` feedback provider: SPEAR's phase 1 read from a device's feedback inbox.

Instead of answering prompts and asking an oracle, the client turns what people judged on the
device's page since the last round into SPEAR's wins and losses (the issue's rule):

- an answer marked right is a win;
- an answer marked wrong is a loss, with confidence 1.0 when its revision was marked right (and
  that revision, paired with the *original* prompt, is a win), 0.5 otherwise.

Nothing is generated here: the person already saw the answers, and the traces are the exact
texts they judged, re-tokenised. :class:`HumanFeedback` is the provider: its
:meth:`~HumanFeedback.judged` opens the device's store for one round and closes it on every
path, including a round whose training raises.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from spearfl.algorithms.base import RoundContext
from spearfl.algorithms.rollout import CONFIDENCE_FIXED, CONFIDENCE_UNFIXED, RolloutResult, Trace
from spearfl.feedback.base import Feedback, FeedbackProvider, JudgedRound
from spearfl.feedback.store import FeedbackStore, Interaction
from spearfl.models.policy import Policy
from spearfl.models.prompts import text_ids
from spearfl.tasks.base import Example


@dataclass
class HumanRollout:
    result: RolloutResult
    used_ids: list[int]
    """The interactions these traces came from (marked used once a round trains on them)."""


def asked_example(interaction: Interaction) -> Example:
    """A free question typed on the page: no options, no gold (only the person judges it)."""
    return Example(
        uid=f"asked-{interaction.id}", question=interaction.prompt, options=(), gold="", label=""
    )


def human_rollout(
    policy: Policy, store: FeedbackStore, examples: Mapping[str, Example]
) -> HumanRollout:
    """Wins and losses from every judged interaction no round has used yet."""
    start = time.perf_counter()

    def ids(text: str) -> tuple[int, ...]:
        return tuple(text_ids(policy.tokenizer, text))

    result = RolloutResult()
    used: list[int] = []
    right = fixed = unfixed = revised = 0
    for item in store.judged_unused():
        answer = ids(item.answer)
        if not answer:
            continue  # an empty answer has no tokens to learn from
        example = examples.get(item.example_uid or "") or asked_example(item)
        prompt = tuple(policy.encode(item.messages, item.assistant_prefix))
        used.append(item.id)
        if item.verdict == "right":
            right += 1
            result.wins.append(Trace(example, prompt, answer, item.answer))
            continue
        revised += item.revision is not None
        revision = ids(item.revision or "")
        if item.revision_verdict == "right" and revision:
            fixed += 1
            result.wins.append(Trace(example, prompt, revision, item.revision or ""))
            confidence = CONFIDENCE_FIXED
        else:
            unfixed += 1
            confidence = CONFIDENCE_UNFIXED
        result.losses.append(Trace(example, prompt, answer, item.answer, confidence))
    result.stats = {
        "num_rollouts": len(used),
        "y0_correct": right,
        "y0_valid": len(used),
        "revisions_attempted": revised,
        "revisions_successful": fixed,
        "format_fixes_attempted": 0,
        "format_fixes_kept": 0,
        "losses_fixed": fixed,
        "losses_unfixed": unfixed,
        "tokens_generated": 0,
        "completions_generated": 0,
        "rollout_seconds": time.perf_counter() - start,
    }
    return HumanRollout(result, used)


class HumanFeedback(FeedbackProvider):
    """People judge on the device's page (``spearfl serve``); a round trains on what they said.

    There is no one to ask during the round, so :meth:`check` and :meth:`feedback` refuse: only
    algorithms that learn from stored verdicts (registered with ``human_feedback=True``) take
    this provider.
    """

    def check(self, example: Example, completion: str) -> bool:
        raise NotImplementedError(
            "feedback.provider 'human' judges only on the device's page, not during a round"
        )

    def feedback(self, example: Example, completion: str) -> Feedback:
        return Feedback(correct=self.check(example, completion))

    @contextmanager
    def judged(
        self, policy: Policy, examples: Sequence[Example], ctx: RoundContext
    ) -> Iterator[JudgedRound]:
        """Every judged, unused interaction of the device's inbox; the store closes when the
        round ends, however it ends, and nothing is marked used unless ``mark_used`` ran."""
        if ctx.device_dir is None:
            raise ValueError("feedback.provider 'human' needs the device's folder (device-dir)")
        store = FeedbackStore.for_device(ctx.device_dir)
        try:
            found = human_rollout(policy, store, {ex.uid: ex for ex in examples})
            yield JudgedRound(found.result, lambda: store.mark_used(found.used_ids, ctx.round_num))
        finally:
            store.close()
