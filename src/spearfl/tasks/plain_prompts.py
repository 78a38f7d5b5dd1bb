"""Prompts for base models (no chat template), laid out as the paper's code writes them.

A base model reads one plain text, so the request is organised in bracketed sections (SPEC §8):
an instruction line, then ``[QUESTION]``-style sections, and at the end the place where the
model's answer starts: ``Answer:`` for a bare letter, an empty section to continue for answers
that reason first. A revision repeats the whole original prompt as its task, followed by the
previous answer, the feedback, the instructions and an empty corrected-solution section.

Chat models get the tasks' chat messages instead; :mod:`spearfl.models.prompts` picks one.
"""

from __future__ import annotations

REVISION_RULES = (
    "Write the answer as if it were your first attempt at the task.",
    "Use the feedback to get it right, but do not mention the feedback.",
    "No preamble: start directly with the answer.",
    "Rewrite the whole solution, not only the part that was wrong.",
    "Keep it concise.",
)
FORMAT_FIX_RULES = (
    "Rewrite the previous answer so that it follows the required format exactly.",
    "Keep its final answer; do not change what it concludes.",
)


def section(title: str, body: str) -> str:
    """One ``[TITLE]`` section: the title on its own line, then the body."""
    return f"[{title}]\n{body.strip()}"


def open_section(title: str) -> str:
    """An empty section for the model to fill: the title and the line break after it."""
    return f"[{title}]\n"


def join_sections(*parts: str) -> str:
    """Sections and lines separated by one blank line each."""
    return "\n\n".join(parts)


def option_lines(letters: tuple[str, ...], options: tuple[str, ...]) -> str:
    """One ``A. text`` line per option."""
    return "\n".join(
        f"{letter}. {text.strip()}" for letter, text in zip(letters, options, strict=True)
    )


def _rules(rules: tuple[str, ...], format_instruction: str) -> str:
    return "\n".join(f"- {rule}" for rule in (*rules, format_instruction))


def revision_prompt(task_prompt: str, previous: str, hint: str, format_instruction: str) -> str:
    """Task (the whole original prompt), previous answer, feedback, instructions, and the empty
    corrected-solution section, in the paper's order."""
    return join_sections(
        section("TASK", task_prompt),
        section("PREVIOUS ANSWER (do not copy)", previous),
        section("FEEDBACK", hint),
        section("INSTRUCTIONS", _rules(REVISION_RULES, format_instruction)),
        open_section("CORRECTED SOLUTION"),
    )


def format_fix_prompt(task_prompt: str, previous: str, format_instruction: str) -> str:
    """The same request without feedback: rewrite a correct answer in the required format."""
    return join_sections(
        section("TASK", task_prompt),
        section("PREVIOUS ANSWER", previous),
        section("INSTRUCTIONS", _rules(FORMAT_FIX_RULES, format_instruction)),
        open_section("REWRITTEN ANSWER"),
    )
