"""The task interface: everything that differs between benchmarks lives behind it.

A task turns raw rows into :class:`Example` objects, writes prompts, reads answers out of
completions, judges correctness, writes the oracle's partial hint and says how to evaluate.
Algorithms, feedback providers and the evaluator only ever talk to this interface.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

from spearfl.tasks.plain_prompts import format_fix_prompt, revision_prompt

Message = dict[str, str]
"""A chat message: ``{"role": "user" | "assistant" | "system", "content": str}``.

A task's user turn may also carry ``"plain"``: the whole prompt as a base model without a chat
template reads it (:mod:`spearfl.tasks.plain_prompts`). The formatter uses one or the other."""

PLAIN = "plain"
"""Key of a user turn's base-model wording (see :data:`Message`)."""


def user_turn(content: str, plain: str | None = None) -> Message:
    """A user message, with the base-model wording of the whole prompt when there is one."""
    turn = {"role": "user", "content": content}
    if plain is not None:
        turn[PLAIN] = plain
    return turn


EvalMethod = Literal["letter_loglik", "generative", "option_text"]

LETTERS = ("A", "B", "C", "D", "E", "F", "G", "H")


@dataclass(frozen=True)
class Example:
    """One prompt a client holds.

    ``gold`` is the canonical correct answer in the form :meth:`Task.extract_answer` returns
    (a letter, an option text, or ``"yes"``/``"no"``); ``label`` is what the Dirichlet partition
    splits on. The model never sees ``gold``; only the feedback provider and evaluator do.
    """

    uid: str
    question: str
    options: tuple[str, ...]
    gold: str
    label: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def gold_index(self) -> int:
        """Index of the correct option (letter tasks and option-text tasks)."""
        if self.gold in LETTERS[: len(self.options)]:
            return LETTERS.index(self.gold)
        return self.options.index(self.gold)


@dataclass(frozen=True)
class TaskData:
    """The examples a run trains on (to be partitioned) and the held-out eval examples."""

    train: list[Example]
    eval: list[Example]


class Task(ABC):
    """A benchmark: data, prompts, answer extraction, correctness, oracle hint, evaluation."""

    name: str = "task"
    eval_method: EvalMethod = "letter_loglik"
    answer_marker: str | None = None
    """Literal marker that introduces the final answer (e.g. ``"Answer:"``), if the task uses one.
    Its tokens are never penalised by unlikelihood."""

    # ----------------------------------------------------------------- data
    @abstractmethod
    def load(self) -> TaskData:
        """Load (or generate) the train and eval examples this task was configured with."""

    def eval_split_used(self) -> str:
        """Where the latest :meth:`load` took the eval examples from, in words (it goes into
        every eval record and ``summary.json``)."""
        return f"the {self.name} task's own held-out questions"

    # -------------------------------------------------------------- prompts
    @abstractmethod
    def messages(self, example: Example) -> list[Message]:
        """The conversation that asks the question (ends with a user turn). Benchmark tasks
        give that turn a base-model wording too (:func:`user_turn`)."""

    def assistant_prefix(self, example: Example) -> str:
        """Text pre-filled at the start of the assistant's reply (part of the prompt)."""
        return ""

    def format_instruction(self, example: Example) -> str:
        """How the answer must be written, as a base-model prompt and its revisions say it."""
        raise NotImplementedError(f"task {self.name!r} has no base-model prompt layout")

    def revision_messages(self, example: Example, previous: str, hint: str) -> list[Message]:
        """Task + previous attempt + feedback + an instruction to answer afresh (SPEC §3 step 5)."""
        *before, last = self.messages(example)
        content = (
            f"{last['content']}\n\nYour previous answer was: {previous.strip()}\n"
            f"Feedback: {hint}\n"
            "Write a fresh, complete answer to the question. Do not mention the feedback."
        )
        plain = last.get(PLAIN)
        if plain is not None:
            plain = revision_prompt(plain, previous, hint, self.format_instruction(example))
        return [*before, user_turn(content, plain)]

    def format_fix_messages(self, example: Example, completion: str) -> list[Message]:
        """Ask for the same answer again in the required format, with no feedback."""
        *before, last = self.messages(example)
        content = (
            f"{last['content']}\n\nYour previous answer was: {completion.strip()}\n"
            "Rewrite it so that it follows the required answer format exactly."
        )
        plain = last.get(PLAIN)
        if plain is not None:
            plain = format_fix_prompt(plain, completion, self.format_instruction(example))
        return [*before, user_turn(content, plain)]

    # -------------------------------------------------------------- answers
    @abstractmethod
    def extract_answer(self, example: Example, completion: str) -> str | None:
        """The answer the completion declares, in the form of ``example.gold``; None if none."""

    def is_correct(self, example: Example, completion: str) -> bool:
        return self.extract_answer(example, completion) == example.gold

    def is_well_formatted(self, example: Example, completion: str) -> bool:
        """Whether the completion follows the required format (used by the format-fix step)."""
        return True

    def answer_complete(self, text: str) -> bool:
        """Whether ``text`` (the end of a completion so far) has finished declaring an answer.

        Generative evaluation stops a sequence there. Tasks with an answer marker stop once the
        word after the marker is complete; others decode to EOS.
        """
        if self.answer_marker is None:
            return False
        pattern = rf"{re.escape(self.answer_marker)}\s*\(?[A-Za-z]+\b[^\w]"
        return re.search(pattern, text, flags=re.IGNORECASE) is not None

    def answer_span(self, example: Example, completion: str) -> tuple[int, int] | None:
        """Character span ``[start, end)`` of the declared answer in ``completion``."""
        return None

    # ------------------------------------------------------------- feedback
    @abstractmethod
    def oracle_hint(self, example: Example, completion: str) -> str:
        """A hint for a wrong completion that helps without containing the answer."""

    # ------------------------------------------------------- privileged text
    def privileged_text(self, example: Example) -> str:
        """Ground truth an OPSD teacher reads before the question (SPEC §4); never shown to SPEAR.

        Default: the gold answer, with its option text for letter tasks. Tasks whose rows carry
        more (solutions, facts) override this and put the answer first, so cutting the text to
        ``distill.priv_max_chars`` never drops it.
        """
        if example.gold in LETTERS[: len(example.options)]:
            option = example.options[example.gold_index].strip()
            return f"The correct answer is {example.gold}: {option}"
        return example.gold


def find_last(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    """The last match of ``pattern`` in ``text`` (answers are 'last declared')."""
    last = None
    for match in pattern.finditer(text):
        last = match
    return last
