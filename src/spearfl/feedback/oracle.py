"""The oracle provider of the paper's experiments: gold fields decide, the task writes the hint."""

from __future__ import annotations

from spearfl.feedback.base import Feedback, FeedbackProvider
from spearfl.tasks.base import Example, Task


class OracleFeedback(FeedbackProvider):
    def __init__(self, task: Task) -> None:
        self.task = task

    def check(self, example: Example, completion: str) -> bool:
        return self.task.is_correct(example, completion)

    def feedback(self, example: Example, completion: str) -> Feedback:
        if self.check(example, completion):
            return Feedback(correct=True)
        return Feedback(correct=False, hint=self.task.oracle_hint(example, completion))
