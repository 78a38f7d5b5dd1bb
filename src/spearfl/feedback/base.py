"""The feedback-provider interface: is this answer right, and if not, a hint without the answer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from spearfl.tasks.base import Example


@dataclass(frozen=True)
class Feedback:
    correct: bool
    hint: str | None = None
    """Partial, non-answer guidance for a wrong answer; None when correct."""


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
