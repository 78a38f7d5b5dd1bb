"""The feedback-provider interface: is this answer right, and if not, a hint without the answer.

A provider answers in one of two ways. A *live* provider (the oracle) judges each answer the
client generates during the round: :meth:`FeedbackProvider.check` and
:meth:`FeedbackProvider.feedback`. A provider whose judgements were *given before the round*
(people on the device's page, :mod:`spearfl.feedback.human`) hands the round its traces
through :meth:`FeedbackProvider.judged`, a context manager that owns whatever it opened (the
device's store) and releases it however the round ends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from spearfl.tasks.base import Example

if TYPE_CHECKING:  # the algorithms import this module; these names are for annotations only
    from spearfl.algorithms.base import RoundContext
    from spearfl.algorithms.rollout import RolloutResult
    from spearfl.models.policy import Policy


@dataclass(frozen=True)
class Feedback:
    correct: bool
    hint: str | None = None
    """Partial, non-answer guidance for a wrong answer; None when correct."""


@dataclass
class JudgedRound:
    """Traces judged before the round, and how to consume them once a round trained on them."""

    result: RolloutResult
    mark_used: Callable[[], None]
    """Call after training succeeded: the same judgements are then never trained on again."""


class FeedbackProvider(ABC):
    """Says whether an answer is right and, when it is wrong, gives a partial hint.

    In the paper's experiments this is an oracle built from the dataset's gold fields; in
    deployment it is a person or another model.
    """

    @abstractmethod
    def check(self, example: Example, completion: str) -> bool:
        """Binary correctness of ``completion`` for ``example``."""

    @abstractmethod
    def feedback(self, example: Example, completion: str) -> Feedback:
        """Correctness plus, for a wrong answer, the hint used to revise it."""

    def judged(
        self, policy: Policy, examples: Sequence[Example], ctx: RoundContext
    ) -> AbstractContextManager[JudgedRound | None]:
        """The round's traces when they were judged beforehand; None (the default, a live
        provider) when the client must generate answers and ask :meth:`check`."""
        return nullcontext(None)
