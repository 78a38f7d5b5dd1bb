"""StrategyQA (``ChilleD/StrategyQA``): yes/no questions that need a few implicit reasoning steps.

Rows have ``qid``, ``question``, ``answer`` (bool), ``facts`` (the evidence sentences), ``term``
and ``description``. ``answer`` must be a bool; the strings ``"true"`` / ``"false"`` (any case)
are accepted too, because CSV and some JSON exports write bools that way. The gold answer, and
the partition label, is ``"yes"`` or ``"no"``.

The model reasons step by step and ends with ``Answer: yes`` or ``Answer: no``; the answer read
out is the last such declaration, else the last standalone "yes"/"no" (SPEC §5).

The oracle hint (SPEC §5: "wrong" + the first half, at least one, of the facts + a format
reminder) must never declare an answer: it has no ``Answer:`` marker and no standalone "yes" or
"no" at all (not only the gold one, so the words' presence says nothing either). A fact that
contains one is skipped and the next fact takes its place; the format reminder points back to
the question's instructions instead of quoting them.

Splits: train / test on the Hub (eval split default ``test``). The shared offline copy has a
train file only, so there eval is the last ``eval_fraction`` of train (then capped at
``max_eval_examples``), as :mod:`spearfl.tasks.dataset` does for any missing eval split.
"""

from __future__ import annotations

import re

from spearfl.tasks.base import Example, Message, find_last, user_turn
from spearfl.tasks.dataset import DatasetTask
from spearfl.tasks.plain_prompts import join_sections, open_section, section
from spearfl.tasks.rows import RowFields, RowSource

YES, NO = "yes", "no"

_DECLARED = re.compile(r"\banswer\b[*_]*\s*:\s*[*_]*\s*(?P<word>yes|no)\b", re.IGNORECASE)
_WORD = re.compile(r"(?<![\w-])(?P<word>yes|no)(?![\w-])", re.IGNORECASE)
_ANSWER_LINE = re.compile(r"[*_]*answer[*_]*\s*:\s*[*_]*\s*(yes|no)[*_]*\s*[.!]?", re.IGNORECASE)
_MARKER = re.compile(r"\banswer\b[*_]*\s*:", re.IGNORECASE)
# For stopping generation (matched on the last few tokens): the word must be followed by more.
_DECLARED_DONE = re.compile(r"answer\b[*_]*\s*:\s*[*_]*\s*(?:yes|no)\W", re.IGNORECASE)


def declares_answer(text: str) -> bool:
    """Whether ``text`` could be read as an answer: an ``Answer:`` marker or a standalone
    "yes"/"no" in any case. Hints and the facts quoted in them must not."""
    return bool(_MARKER.search(text) or _WORD.search(text))


def parse_bool(value: object) -> bool | None:
    """A bool, or the strings "true"/"false" in any case; None for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


class StrategyQATask(DatasetTask):
    """StrategyQA as a generative yes/no task (see the module docstring)."""

    name = "strategyqa"
    hub_id = "ChilleD/StrategyQA"
    default_eval_split = "test"
    eval_method = "generative"
    answer_marker = "Answer:"

    # ----------------------------------------------------------------- data
    def parse_row(self, source: RowSource) -> Example:
        fields = RowFields(source)
        question = fields.text("question")
        fields.require("answer")
        answer = parse_bool(source.data["answer"])
        if answer is None:
            raise fields.error(
                f"'answer' must be a bool (or 'true'/'false'), got {source.data['answer']!r}"
            )
        facts = tuple(fact for fact in fields.texts("facts") if fact)
        gold = YES if answer else NO
        data = source.data
        qid = data.get("qid")
        return Example(
            uid=str(qid) if qid is not None else f"{source.file}:{source.row}",
            question=question,
            options=(YES, NO),
            gold=gold,
            label=gold,
            meta={
                "source": source.file,
                "row": source.row,
                "facts": facts,
                "term": data.get("term"),
                "description": data.get("description"),
            },
        )

    # -------------------------------------------------------------- prompts
    def format_instruction(self, example: Example) -> str:
        return (
            'Reason step by step, then end with a final line that is exactly "Answer: yes" or '
            '"Answer: no".'
        )

    def messages(self, example: Example) -> list[Message]:
        content = f"{example.question}\n\n{self.format_instruction(example)}"
        plain = join_sections(
            f"Answer the yes/no question. {self.format_instruction(example)}",
            section("QUESTION", example.question),
            open_section("REASONING"),  # it reasons first: never end with "Answer:"
        )
        return [user_turn(content, plain)]

    # -------------------------------------------------------------- answers
    @staticmethod
    def _locate(completion: str) -> re.Match[str] | None:
        """The last declaration, else the last standalone yes/no word."""
        return find_last(_DECLARED, completion) or find_last(_WORD, completion)

    def extract_answer(self, example: Example, completion: str) -> str | None:
        found = self._locate(completion)
        return found.group("word").lower() if found else None

    def answer_span(self, example: Example, completion: str) -> tuple[int, int] | None:
        found = self._locate(completion)
        return found.span("word") if found else None

    def answer_complete(self, text: str) -> bool:
        """``Answer: yes``/``no`` followed by one more character (not e.g. "Answer: not")."""
        return _DECLARED_DONE.search(text) is not None

    def is_well_formatted(self, example: Example, completion: str) -> bool:
        """Some line is an ``Answer: yes`` / ``Answer: no`` declaration on its own."""
        return any(_ANSWER_LINE.fullmatch(line.strip()) for line in completion.splitlines())

    # ------------------------------------------------------------- feedback
    @staticmethod
    def hint_facts(example: Example) -> list[str]:
        """The first half (at least one) of the facts, skipping any that declare an answer and
        taking the next ones instead."""
        facts = list(example.meta.get("facts", ()))
        wanted = max(1, len(facts) // 2) if facts else 0
        return [fact for fact in facts if not declares_answer(fact)][:wanted]

    def privileged_text(self, example: Example) -> str:
        """The answer, then every fact (OPSD's teacher context; the answer first survives a cut)."""
        facts = "\n".join(f"- {fact}" for fact in example.meta.get("facts", ()))
        answer = f"The answer is {example.gold}."
        return f"{answer}\nFacts:\n{facts}" if facts else answer

    def oracle_hint(self, example: Example, completion: str) -> str:
        """Wrong + some facts + a format reminder; never declares an answer (module docstring)."""
        facts = self.hint_facts(example)
        parts = ["Your answer is not correct."]
        if facts:
            parts.append("Facts that may help:\n" + "\n".join(f"- {fact}" for fact in facts))
        parts.append(
            "Reason step by step again and finish with the final answer line in the exact "
            "format the question asks for."
        )
        return "\n".join(parts)
