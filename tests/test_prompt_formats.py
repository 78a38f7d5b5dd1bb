"""Prompt formats: the paper's base-model layout, chat templates unchanged, and who picks.

Base-model prompts go through ``Policy.encode`` on the tiny Qwen2 / Llama models with the real
tokenizers; chat prompts through the embedded model's tokenizer and template.
"""

from __future__ import annotations

import copy
import datetime
import logging
from pathlib import Path

import pytest

from spearfl.algorithms.opsd import with_reference
from spearfl.config import load_config
from spearfl.models.loading import uses_chat_template
from spearfl.models.policy import Policy
from spearfl.models.prompts import CHAT_TEMPLATE_DATE, PromptFormatter, plain_text
from spearfl.tasks.arc import ArcChallengeTask
from spearfl.tasks.base import Example
from spearfl.tasks.embedded import EmbeddedCategoryTask
from spearfl.tasks.hellaswag import HellaSwagTask
from spearfl.tasks.math_mcqa import MathMCQATask
from spearfl.tasks.strategyqa import StrategyQATask

ARC = ArcChallengeTask(path="unused")
HELLASWAG = HellaSwagTask(path="unused")
MATH = MathMCQATask(path="unused")
STRATEGYQA = StrategyQATask(path="unused")

ARC_3 = Example(
    "arc-3", "Which gas do plants take in?", ("oxygen", "carbon dioxide", "nitrogen"), "B", "B"
)
SWAG = Example(
    "hs-1",
    "Baking: She puts the tray in the oven.",
    ("she eats the oven.", "she waits for the cake.", "the tray sings.", "it rains inside."),
    "B",
    "B",
)
MATH_EX = Example(
    "m-1", "What is $2+3$?", ("$4$", "$5$", "$6$", "$7$"), "B", "B", {"solution": "$\\boxed{5}$"}
)
SQA = Example("s-1", "Can a fish climb a tree?", ("yes", "no"), "no", "no", {"facts": ("x",)})

ARC_3_PLAIN = (
    "Choose the best option to answer the question. Respond with only the letter (A, B or C).\n"
    "\n"
    "[QUESTION]\n"
    "Which gas do plants take in?\n"
    "\n"
    "[OPTIONS]\n"
    "A. oxygen\n"
    "B. carbon dioxide\n"
    "C. nitrogen\n"
    "\n"
    "Answer:"
)
ANSWER_COLON = {"qwen2": [16141, 25], "llama3": [16533, 25]}
"""``"Answer"`` and ``":"`` in each real vocabulary (the last tokens of a letter prompt)."""


def _policy(model_dir: Path, *extra: str) -> Policy:
    overrides = [f"model.model_name={model_dir}", "lora.last_n_layers=1", "lora.r=4", *extra]
    return Policy.from_config(load_config(None, overrides))


@pytest.fixture(scope="module")
def paper_policy(tiny_paper_model_dir: Path) -> Policy:
    return _policy(tiny_paper_model_dir)


# --------------------------------------------------------------- base-model layouts
def test_letter_prompt_is_bracketed_and_ends_with_answer(paper_policy, paper_family):
    ids = paper_policy.encode(ARC.messages(ARC_3))
    tok = paper_policy.tokenizer
    assert paper_policy.prompt_format == "plain (base model)"
    assert ids == tok(ARC_3_PLAIN)["input_ids"]
    assert ids[-2:] == ANSWER_COLON[paper_family]  # nothing after "Answer:", not even "\n"
    if paper_family == "llama3":
        assert ids[0] == 128000  # <|begin_of_text|>, as the base model was trained


def test_hellaswag_prompt_has_a_context_section(paper_policy):
    text = paper_policy.tokenizer.decode(
        paper_policy.encode(HELLASWAG.messages(SWAG)), skip_special_tokens=True
    )
    assert text == (
        "Choose the ending that best continues the context. Respond with only the letter "
        "(A, B, C or D).\n\n[CONTEXT]\nBaking: She puts the tray in the oven.\n\n[OPTIONS]\n"
        "A. she eats the oven.\nB. she waits for the cake.\nC. the tray sings.\n"
        "D. it rains inside.\n\nAnswer:"
    )


def test_reasoning_prompts_end_with_a_section_to_continue(paper_policy):
    tok = paper_policy.tokenizer

    def text(task, example):
        return tok.decode(paper_policy.encode(task.messages(example)), skip_special_tokens=True)

    assert text(MATH, MATH_EX) == (
        "Solve the problem and choose the correct option. Reason step by step, then end with a "
        'final line of the form "Answer: X", where X is the letter of the correct option '
        "(A, B, C or D).\n\n[PROBLEM]\nWhat is $2+3$?\n\n[OPTIONS]\nA. $4$\nB. $5$\nC. $6$\n"
        "D. $7$\n\n[SOLUTION]\n"
    )
    assert text(STRATEGYQA, SQA) == (
        "Answer the yes/no question. Reason step by step, then end with a final line that is "
        'exactly "Answer: yes" or "Answer: no".\n\n[QUESTION]\nCan a fish climb a tree?\n\n'
        "[REASONING]\n"
    )


def test_revision_prompt_sections_in_the_papers_order(paper_policy):
    hint = "Your answer is not correct. Think about photosynthesis."
    ids = paper_policy.encode(ARC.revision_messages(ARC_3, " A\n", hint))
    assert paper_policy.tokenizer.decode(ids, skip_special_tokens=True) == (
        f"[TASK]\n{ARC_3_PLAIN}\n\n"
        "[PREVIOUS ANSWER (do not copy)]\nA\n\n"
        f"[FEEDBACK]\n{hint}\n\n"
        "[INSTRUCTIONS]\n"
        "- Write the answer as if it were your first attempt at the task.\n"
        "- Use the feedback to get it right, but do not mention the feedback.\n"
        "- No preamble: start directly with the answer.\n"
        "- Rewrite the whole solution, not only the part that was wrong.\n"
        "- Keep it concise.\n"
        "- Respond with only the letter (A, B or C).\n\n"
        "[CORRECTED SOLUTION]\n"
    )


def test_reasoning_revision_and_format_fix_repeat_the_tasks_format(paper_policy):
    tok = paper_policy.tokenizer
    revision = tok.decode(
        paper_policy.encode(STRATEGYQA.revision_messages(SQA, "Fish swim. Answer: yes", "Wrong.")),
        skip_special_tokens=True,
    )
    original = plain_text(STRATEGYQA.messages(SQA))
    assert revision.startswith(f"[TASK]\n{original.strip()}\n\n[PREVIOUS ANSWER (do not copy)]\n")
    rules = revision.split("[INSTRUCTIONS]\n")[1]
    assert rules.endswith(
        '- Reason step by step, then end with a final line that is exactly "Answer: yes" or '
        '"Answer: no".\n\n[CORRECTED SOLUTION]\n'
    )
    fix = tok.decode(
        paper_policy.encode(MATH.format_fix_messages(MATH_EX, "It is 5, so b")),
        skip_special_tokens=True,
    )
    assert fix == (
        f"[TASK]\n{plain_text(MATH.messages(MATH_EX)).strip()}\n\n"
        "[PREVIOUS ANSWER]\nIt is 5, so b\n\n"
        "[INSTRUCTIONS]\n"
        "- Rewrite the previous answer so that it follows the required format exactly.\n"
        "- Keep its final answer; do not change what it concludes.\n"
        f"- {MATH.answer_instruction(MATH_EX)}\n\n"
        "[REWRITTEN ANSWER]\n"
    )


def test_opsd_reference_reaches_the_base_model_prompt(paper_policy):
    student = paper_policy.encode(ARC.messages(ARC_3))
    teacher = paper_policy.encode(with_reference(ARC.messages(ARC_3), "The answer is B"))
    text = paper_policy.tokenizer.decode(teacher, skip_special_tokens=True)
    assert text == f"Reference: The answer is B\n\n{ARC_3_PLAIN}"
    assert teacher[-2:] == student[-2:]


def test_a_base_model_wording_belongs_to_a_single_turn():
    turns = [{"role": "assistant", "content": "hi"}, *ARC.messages(ARC_3)]
    with pytest.raises(ValueError, match="single user turn, got 2 messages"):
        plain_text(turns)
    # Free-form conversations (a question typed on the page) keep the paragraph layout.
    assert plain_text([{"role": "user", "content": "Why?"}]) == "Why?\n"


# --------------------------------------------------------------------- chat prompts
@pytest.fixture(scope="module")
def chat_policy(tiny_model_dir: Path) -> Policy:
    return _policy(tiny_model_dir)


def test_embedded_chat_prompts_are_unchanged(chat_policy):
    task = EmbeddedCategoryTask()
    example = task.load().eval[0]
    system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    worked = (
        "<|im_start|>user\nWhich of these is a planet?\nOptions: chair, mars, river, bread\n"
        "Reply with one option, exactly as written.<|im_end|>\n"
        "<|im_start|>assistant\nmars<|im_end|>\n"
    )
    question = (
        "Which of these is a color?\nOptions: chile, truck, blue, radish\n"
        "Reply with one option, exactly as written."
    )
    expected = (
        f"<|im_start|>system\n{system}<|im_end|>\n{worked}"
        f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )
    tok = chat_policy.tokenizer
    assert chat_policy.prompt_format == "chat template"
    assert (
        chat_policy.encode(task.messages(example))
        == tok(expected, add_special_tokens=False)["input_ids"]
    )
    hint = "That is not right. It is not car, and it is not red."
    revision = (
        f"<|im_start|>system\n{system}<|im_end|>\n{worked}<|im_start|>user\nYou answered: car\n"
        f"{hint}\n\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (
        chat_policy.encode(task.revision_messages(example, "car", hint))
        == tok(revision, add_special_tokens=False)["input_ids"]
    )


def test_chat_models_get_the_chat_wording_of_benchmark_prompts(chat_policy):
    text = chat_policy.tokenizer.decode(chat_policy.encode(ARC.messages(ARC_3)))
    assert text.endswith(
        "<|im_start|>user\nWhich gas do plants take in?\n\nA. oxygen\nB. carbon dioxide\n"
        "C. nitrogen\n\nAnswer with the letter of the correct option (A, B or C) only."
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "[QUESTION]" not in text


# ------------------------------------------------------------ who picks the format
def test_the_tokenizer_decides_not_the_model_name(paper_tokenizer, tiny_model_dir, chat_policy):
    chat_tok = chat_policy.tokenizer  # from the folder "tiny-llama": no "instruct" in its name
    assert "instruct" not in str(tiny_model_dir)
    assert uses_chat_template(chat_tok, "auto", "tiny-llama") is True
    assert uses_chat_template(paper_tokenizer, "auto", "Qwen/Qwen2.5-1.5B-Instruct") is False
    assert uses_chat_template(chat_tok, "off", "x") is False
    with pytest.raises(ValueError, match="'on' but Qwen/Qwen2.5-1.5B's tokenizer has none"):
        uses_chat_template(paper_tokenizer, "on", "Qwen/Qwen2.5-1.5B")


def test_prompt_format_is_logged_once_at_load(tiny_paper_model_dir, tiny_model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="spearfl.models.loading"):
        plain = _policy(tiny_paper_model_dir)
        forced_off = _policy(tiny_model_dir, "model.chat_template=off")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("prompt format")]
    assert lines == [
        "prompt format: plain (base model) (model.chat_template: auto)",
        "prompt format: plain (base model) (model.chat_template: off)",
    ]
    assert plain.prompt_format == forced_off.prompt_format == "plain (base model)"


LLAMA3_STYLE_TEMPLATE = (
    "{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    '{%- set date_string = strftime_now("%d %b %Y") %}{%- else %}'
    '{%- set date_string = "unknown" %}{%- endif %}{%- endif %}'
    "<|start_header_id|>system<|end_header_id|>\n\nToday Date: {{ date_string }}<|eot_id|>"
    "{%- for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{%- endfor %}"
    "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{%- endif %}"
)


def test_a_dated_chat_template_gets_a_fixed_date():
    from spearfl.models.paper_tokenizers import build_tokenizer

    tokenizer = copy.deepcopy(build_tokenizer("llama3"))
    tokenizer.chat_template = LLAMA3_STYLE_TEMPLATE
    formatter = PromptFormatter(tokenizer, use_chat_template=True)
    first = formatter.render(ARC.messages(ARC_3))
    second = formatter.render(ARC.messages(ARC_3))
    today = datetime.date.today().strftime("%d %b %Y")
    assert CHAT_TEMPLATE_DATE == "26 Jul 2024"
    assert first == second
    assert "Today Date: 26 Jul 2024<|eot_id|>" in first
    assert today == CHAT_TEMPLATE_DATE or today not in first
    # Without the fixed date the template reads the clock: that is what the formatter avoids.
    dated = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
    )
    assert f"Today Date: {today}" in dated
    assert "[QUESTION]" not in first  # the base-model wording never reaches a template
