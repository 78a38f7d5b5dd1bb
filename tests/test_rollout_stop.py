"""Rollouts end like evaluation: at EOS, at each row's own budget, or once the answer line is
complete; a prompt with no room to answer is named (or skipped and counted)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from spearfl.algorithms.rollout import self_play_rollout
from spearfl.config import load_config
from spearfl.feedback.oracle import OracleFeedback
from spearfl.models.generation import PrefixRunner, answer_stop, decode, left_pad
from spearfl.models.policy import Policy, PromptTooLongError
from spearfl.tasks.base import Example
from spearfl.tasks.strategyqa import StrategyQATask

TASK = StrategyQATask()


def _scripted(rows: list[list[int]]):
    """A ``pick`` that writes ``rows[r][step]`` for row r: generations fixed in advance."""
    step = [0]

    def pick(logits: torch.Tensor) -> torch.Tensor:
        out = torch.tensor([row[min(step[0], len(row) - 1)] for row in rows])
        step[0] += 1
        return out

    return pick


@torch.no_grad()
def test_a_row_stops_after_its_answer_line_while_another_runs_to_its_budget(
    paper_tokenizer, tiny_paper_model_dir
):
    tok = paper_tokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_paper_model_dir).eval()
    answered = "Yes, they can.\nAnswer: yes\nBecause bats fly at night and more words follow"
    musing = " Let me think about it a little more and then decide what"
    scripts = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in (answered, musing)]
    prompts = [[11, 12, 13, 14], [11, 12, 15]]
    state = PrefixRunner(model, prompts, tok.eos_token_id).prefill(prompts)
    tokens, finished = decode(
        model,
        state,
        max_new_tokens=[40, 9],
        stop_ids={tok.eos_token_id},
        pad_id=tok.eos_token_id,
        pick=_scripted(scripts),
        stop_when=answer_stop(tok, TASK),
    )
    # right after the character that ends "yes", not one token later and not at the budget
    assert tok.decode(tokens[0]) == "Yes, they can.\nAnswer: yes\n"
    assert tokens[1] == scripts[1][:9]
    assert finished == [False, False]


@torch.no_grad()
def test_per_row_budgets_give_hugging_face_greedy_outputs(paper_tokenizer, tiny_paper_model_dir):
    tok = paper_tokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_paper_model_dir).eval()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [5, 6, 7, 8, 12, 13], [5, 6, 7, 8, 14, 15, 16, 17, 18]]
    budgets = [6, 2, 4]
    eos = tok.eos_token_id
    state = PrefixRunner(model, prompts, eos).prefill(prompts)
    ours, _ = decode(
        model,
        state,
        max_new_tokens=budgets,
        stop_ids={eos},
        pad_id=eos,
        pick=lambda lg: lg.argmax(-1),
    )
    for prompt, budget, got in zip(prompts, budgets, ours):
        ids, mask = left_pad([prompt], eos, torch.device("cpu"))
        ref = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=budget,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos,
        )
        expected = ref[0, ids.shape[1] :].tolist()
        assert got == expected[: expected.index(eos)] if eos in expected else got == expected
    assert [len(t) for t in ours] == budgets


def _example(uid: str, question: str, row: int) -> Example:
    return Example(
        uid,
        question,
        ("yes", "no"),
        "yes",
        "yes",
        meta={"source": "train.jsonl", "row": row, "facts": ("Bats fly.",)},
    )


@pytest.fixture(scope="module")
def short_and_long(tiny_model_dir):
    """A policy whose ``max_seq_len`` fits one StrategyQA prompt and not the other."""
    short = _example("q-short", "Can bats fly?", 3)
    long = _example("q-long", "Can bats fly? " + "Consider every kind of bat. " * 40, 7)
    probe = Policy.from_config(load_config(None, [f"model.model_name={tiny_model_dir}"]))
    lengths = [len(probe.encode(TASK.messages(e), TASK.assistant_prefix(e))) for e in (short, long)]
    assert lengths[1] > lengths[0] + 100
    probe.max_seq_len = lengths[0] + 10
    return probe, short, long, lengths


def test_budget_is_what_each_prompt_leaves(short_and_long):
    policy, short, long, lengths = short_and_long
    assert policy.token_budgets([[1] * lengths[0], [1] * (lengths[0] + 7)], 256) == [10, 3]
    assert policy.token_budgets([[1] * lengths[0]], 4) == [4]
    with pytest.raises(PromptTooLongError, match="prompt 1 has"):
        policy.token_budgets([[1] * 5, [1] * policy.max_seq_len], 8)


def test_overlong_prompt_is_an_error_naming_the_example(short_and_long):
    policy, short, long, lengths = short_and_long
    gen = load_config(None, []).gen
    with pytest.raises(PromptTooLongError) as err:
        self_play_rollout(policy, TASK, OracleFeedback(TASK), [short, long], gen)
    message = str(err.value)
    assert "task 'strategyqa', example 'q-long' (train.jsonl, row 7)" in message
    assert f"{lengths[1]} tokens" in message and "data.skip_bad_rows" in message


def test_overlong_prompt_is_skipped_and_counted(short_and_long):
    policy, short, long, _ = short_and_long
    gen = load_config(None, ["gen.num_revisions=0", "gen.do_sample=false"]).gen
    result = self_play_rollout(
        policy, TASK, OracleFeedback(TASK), [short, long], gen, skip_bad_rows=True
    )
    assert result.stats["skipped_prompts"] == 1
    assert result.stats["num_rollouts"] == 1
    assert result.stats["completions_generated"] == 1
    # the short prompt had 10 tokens of room: never more, whatever gen.max_new_tokens_y0 says
    assert 1 <= result.stats["tokens_generated"] <= 10
    assert [t.example.uid for t in result.wins + result.losses] == ["q-short"]
