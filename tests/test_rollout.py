"""Phase 1 of SPEAR with a scripted policy: which traces become wins and losses, and why."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from spearfl.algorithms.base import RoundContext
from spearfl.algorithms.rollout import (
    BARE_HINT,
    CONFIDENCE_FIXED,
    CONFIDENCE_UNFIXED,
    Trace,
    sample_prompts,
    self_play_rollout,
)
from spearfl.algorithms.spear import SpearUpdate, cap_losses
from spearfl.config import GenConfig, load_config
from spearfl.feedback.oracle import OracleFeedback
from spearfl.models.generation import Completion
from spearfl.tasks.base import Example
from spearfl.tasks.embedded import EmbeddedCategoryTask

TASK = EmbeddedCategoryTask()
ORACLE = OracleFeedback(TASK)

EX_FIX = Example(
    "fix", "Which of these is an animal?", ("car", "dog", "red", "apple"), "dog", "animal"
)
EX_NEVER = Example(
    "never", "Which of these is a fruit?", ("pear", "bus", "hand", "piano"), "pear", "fruit"
)
EX_RIGHT = Example(
    "right", "Which of these is a color?", ("blue", "drum", "saw", "nurse"), "blue", "color"
)


def _ids(text: str) -> tuple[int, ...]:
    return tuple(ord(c) for c in text)


class ScriptedPolicy:
    """Encodes text as character codes; answers from a script keyed by the prompt's options line.

    ``script[options_line]`` lists the answers in order: the first answer, then one per revision.
    An answer is a string (the model ended it with EOS) or ``(text, False)`` (hit the limit).
    """

    tokenizer = None  # the embedded task has no answer marker: no stop rule needs it
    max_seq_len = 100_000

    def __init__(self, script: dict[str, list]) -> None:
        self.script = script
        self.attempts: Counter[str] = Counter()
        self.seen: list[str] = []
        self.calls: list[dict] = []

    def encode(self, messages, assistant_prefix: str = "") -> list[int]:
        text = "\n".join(f"<{m['role']}>{m['content']}" for m in messages) + assistant_prefix
        return list(_ids(text))

    def generate(
        self,
        prompts,
        *,
        max_new_tokens,
        do_sample,
        temperature=1.0,
        top_p=1.0,
        batch_size=16,
        stop_when=None,
    ):
        self.calls.append(
            {
                "n": len(prompts),
                "max_new_tokens": max_new_tokens,
                "do_sample": do_sample,
                "temperature": temperature,
                "top_p": top_p,
                "batch_size": batch_size,
            }
        )
        outs = []
        for ids in prompts:
            text = "".join(chr(i) for i in ids)
            self.seen.append(text)
            key = next(k for k in self.script if k in text)
            answer = self.script[key][self.attempts[key]]
            self.attempts[key] += 1
            body, finished = (answer, True) if isinstance(answer, str) else answer
            outs.append(Completion(tuple(ids), _ids(body), body, finished))
        return outs


def _options(ex: Example) -> str:
    """The script key: the question, which the first prompt and every revision prompt repeat."""
    return ex.question


def _prompt(policy: ScriptedPolicy, ex: Example) -> tuple[int, ...]:
    return tuple(policy.encode(TASK.messages(ex)))


GEN = GenConfig(
    max_new_tokens_y0=7,
    max_new_tokens_y1=9,
    num_revisions=2,
    temperature=0.8,
    top_p=0.95,
    rollout_batch_size=4,
)


def test_fixed_on_second_revision():
    policy = ScriptedPolicy({_options(EX_FIX): ["car", "red", "dog"]})
    result = self_play_rollout(policy, TASK, ORACLE, [EX_FIX], GEN)
    prompt = _prompt(policy, EX_FIX)
    # the successful revision is paired with the *original* prompt, not the revision prompt
    assert result.wins == [Trace(EX_FIX, prompt, _ids("dog"), "dog", 1.0)]
    assert result.losses == [Trace(EX_FIX, prompt, _ids("car"), "car", CONFIDENCE_FIXED)]
    assert CONFIDENCE_FIXED == 1.0
    s = result.stats
    assert (s["revisions_attempted"], s["revisions_successful"]) == (2, 1)
    assert (s["num_rollouts"], s["y0_correct"], s["y0_valid"]) == (1, 0, 1)
    # three generate calls: y0, then one per revision, each with its own token limit
    assert [c["max_new_tokens"] for c in policy.calls] == [7, 9, 9]
    assert all(
        c["temperature"] == 0.8 and c["top_p"] == 0.95 and c["batch_size"] == 4
        for c in policy.calls
    )
    # the second revision sees the first revision as the previous attempt, with its hint
    second = policy.seen[2]
    assert "You answered: red\n" in second
    hint = second.split("You answered: red\n")[1].split("\n")[0]
    assert hint.startswith("That is not right. It is not red, and it is not ")
    assert "dog" not in hint  # the gold text never leaks into the hint
    # the revision re-lists only the two options the hint did not rule out, gold among them
    listed = second.split("Options: ")[-1].split("\n")[0].split(", ")
    assert len(listed) == 2 and "dog" in listed and "red" not in listed
    # tokens: "car"+EOS, "red"+EOS, "dog"+EOS
    assert s["tokens_generated"] == 12
    assert s["completions_generated"] == 3
    assert s["rollout_seconds"] > 0


def test_never_fixed_is_a_half_confidence_loss():
    policy = ScriptedPolicy({_options(EX_NEVER): ["bus", "hand", "piano"]})
    result = self_play_rollout(policy, TASK, ORACLE, [EX_NEVER], GEN)
    assert result.wins == []
    assert result.losses == [
        Trace(EX_NEVER, _prompt(policy, EX_NEVER), _ids("bus"), "bus", CONFIDENCE_UNFIXED)
    ]
    assert CONFIDENCE_UNFIXED == 0.5
    assert (result.stats["revisions_attempted"], result.stats["revisions_successful"]) == (2, 0)
    # the loss is the first answer y0, never a revision
    assert result.losses[0].text == "bus"


def test_correct_at_once_is_a_win_without_revision():
    policy = ScriptedPolicy({_options(EX_RIGHT): ["Blue."]})
    result = self_play_rollout(policy, TASK, ORACLE, [EX_RIGHT], GEN)
    assert result.wins == [Trace(EX_RIGHT, _prompt(policy, EX_RIGHT), _ids("Blue."), "Blue.")]
    assert result.losses == []
    assert result.stats["revisions_attempted"] == 0
    assert result.stats["y0_correct"] == 1
    assert len(policy.calls) == 1


def test_mixed_batch_order_counts_and_tokens():
    policy = ScriptedPolicy(
        {
            _options(EX_FIX): ["car", "red", "dog"],
            _options(EX_NEVER): ["bus", "hand", ("nothing", False)],
            _options(EX_RIGHT): ["blue"],
        }
    )
    result = self_play_rollout(policy, TASK, ORACLE, [EX_FIX, EX_NEVER, EX_RIGHT], GEN)
    p_fix, p_never, p_right = (_prompt(policy, e) for e in (EX_FIX, EX_NEVER, EX_RIGHT))
    assert result.wins == [
        Trace(EX_RIGHT, p_right, _ids("blue"), "blue"),
        Trace(EX_FIX, p_fix, _ids("dog"), "dog"),
    ]
    assert result.losses == [
        Trace(EX_FIX, p_fix, _ids("car"), "car", 1.0),
        Trace(EX_NEVER, p_never, _ids("bus"), "bus", 0.5),
    ]
    s = result.stats
    assert (s["num_rollouts"], s["y0_correct"], s["y0_valid"]) == (3, 1, 3)
    assert (s["revisions_attempted"], s["revisions_successful"]) == (4, 1)
    assert [c["n"] for c in policy.calls] == [3, 2, 2]
    # y0: car 3+1, bus 3+1, blue 4+1; rev 1: red 3+1, hand 4+1; rev 2: dog 3+1, nothing 7 (cut)
    assert s["tokens_generated"] == 13 + 9 + 11


def test_invalid_answer_is_counted_and_revised():
    policy = ScriptedPolicy({_options(EX_FIX): ["a duck maybe", "dog"]})
    result = self_play_rollout(policy, TASK, ORACLE, [EX_FIX], GEN)
    assert result.stats["y0_valid"] == 0
    assert [t.text for t in result.wins] == ["dog"]
    assert [(t.text, t.confidence) for t in result.losses] == [("a duck maybe", 1.0)]
    # a hint for an answer that is no option rules out two wrong options, never the gold one
    hint_line = policy.seen[1].split("You answered: a duck maybe\n")[1].split("\n")[0]
    match = re.fullmatch(
        r"That is not right\. It is not (car|red|apple), and it is not (car|red|apple)\.",
        hint_line,
    )
    assert match and match.group(1) != match.group(2)


def test_revise_false_makes_every_wrong_a_half_loss():
    policy = ScriptedPolicy(
        {
            _options(EX_FIX): ["car", "dog"],
            _options(EX_NEVER): ["bus"],
            _options(EX_RIGHT): ["blue"],
        }
    )
    result = self_play_rollout(
        policy, TASK, ORACLE, [EX_FIX, EX_NEVER, EX_RIGHT], GEN, revise=False
    )
    assert [t.text for t in result.wins] == ["blue"]
    assert [(t.example.uid, t.text, t.confidence) for t in result.losses] == [
        ("fix", "car", 0.5),
        ("never", "bus", 0.5),
    ]
    assert result.stats["revisions_attempted"] == 0
    assert len(policy.calls) == 1
    assert result.stats["tokens_generated"] == 4 + 4 + 5


def test_zero_revisions_configured_behaves_like_no_revision():
    policy = ScriptedPolicy({_options(EX_FIX): ["car", "dog"]})
    gen = GenConfig(num_revisions=0)
    result = self_play_rollout(policy, TASK, ORACLE, [EX_FIX], gen)
    assert result.wins == []
    assert [(t.text, t.confidence) for t in result.losses] == [("car", 0.5)]
    assert len(policy.calls) == 1


def test_hints_false_uses_the_bare_hint():
    policy = ScriptedPolicy({_options(EX_FIX): ["car", "dog"]})
    result = self_play_rollout(policy, TASK, ORACLE, [EX_FIX], GEN, hints=False)
    assert [t.text for t in result.wins] == ["dog"]
    revision = policy.seen[1]
    assert BARE_HINT == "That is not right."
    expected = "".join(
        chr(i) for i in policy.encode(TASK.revision_messages(EX_FIX, "car", "That is not right."))
    )
    assert revision == expected
    assert "You answered: car\nThat is not right.\n\n" in revision
    assert "It is not" not in revision
    # the control re-lists all four options: nothing was ruled out
    assert "Options: car, dog, red, apple\n" in revision.split("You answered:")[1]


def test_hints_true_uses_the_oracle_hint():
    policy = ScriptedPolicy({_options(EX_FIX): ["car", "dog"]})
    self_play_rollout(policy, TASK, ORACLE, [EX_FIX], GEN)
    revision = policy.seen[1]
    assert "You answered: car\nThat is not right. It is not car, and it is not " in revision
    listed = revision.split("Options: ")[-1].split("\n")[0].split(", ")
    assert len(listed) == 2 and "dog" in listed and "car" not in listed


def test_empty_completion_counts_only_its_eos():
    policy = ScriptedPolicy({_options(EX_NEVER): ["", ("xx", False), "y"]})
    result = self_play_rollout(policy, TASK, ORACLE, [EX_NEVER], GEN)
    assert result.losses[0].completion_ids == ()
    assert result.stats["tokens_generated"] == 1 + 2 + 2


# ------------------------------------------------------------------ cap_losses
def _losses(n: int) -> list[Trace]:
    return [Trace(EX_FIX, (1, 2), (i,), f"loss-{i}", 0.5) for i in range(n)]


def test_cap_losses_keeps_floor_ratio_times_wins():
    losses = _losses(10)
    assert len(cap_losses(losses, 3, 2.0, random.Random(0))) == 6
    assert len(cap_losses(losses, 3, 1.5, random.Random(0))) == 4  # floor(4.5)
    assert len(cap_losses(losses, 1, 0.99, random.Random(0))) == 0  # floor(0.99)
    assert cap_losses(losses, 4, 0.0, random.Random(0)) == []


def test_cap_losses_under_the_cap_is_unchanged():
    losses = _losses(5)
    assert cap_losses(losses, 3, 2.0, random.Random(0)) == losses
    assert cap_losses(losses, 5, 1.0, random.Random(0)) == losses


def test_cap_losses_is_a_reproducible_subset():
    losses = _losses(10)
    first = cap_losses(losses, 2, 2.0, random.Random(11))
    again = cap_losses(losses, 2, 2.0, random.Random(11))
    assert first == again
    assert len({t.text for t in first}) == 4
    assert all(t in losses for t in first)
    picks = {tuple(t.text for t in cap_losses(losses, 2, 2.0, random.Random(s))) for s in range(10)}
    assert len(picks) > 1  # the seed matters: a random subsample, not the first ones


def test_sample_prompts_without_replacement():
    pool = [Example(f"u{i}", "q", ("a", "b"), "a", "x") for i in range(6)]
    picked = sample_prompts(pool, 4, random.Random(3))
    assert len(picked) == 4 and len({e.uid for e in picked}) == 4
    everything = sample_prompts(pool, 10, random.Random(3))
    assert sorted(e.uid for e in everything) == sorted(e.uid for e in pool)


# --------------------------------------------------------- SpearUpdate.rollout
def _spear(policy, *overrides: str) -> SpearUpdate:
    cfg = load_config(None, ["gen.num_revisions=2", *overrides])
    return SpearUpdate(cfg, policy, TASK, ORACLE)


CTX = RoundContext(round_num=1, total_rounds=3, client_id=0, seed=42)


def test_spear_rollout_samples_local_rollout_steps_prompts():
    script = {_options(e): ["blue", "blue", "blue"] for e in (EX_FIX, EX_NEVER, EX_RIGHT)}
    policy = ScriptedPolicy(script)
    result = _spear(policy, "fl.local_rollout_steps=2").rollout([EX_FIX, EX_NEVER, EX_RIGHT], CTX)
    assert result.stats["num_rollouts"] == 2
    assert policy.calls[0]["n"] == 2
    # same context, same prompts
    policy2 = ScriptedPolicy(script)
    again = _spear(policy2, "fl.local_rollout_steps=2").rollout([EX_FIX, EX_NEVER, EX_RIGHT], CTX)
    assert policy.seen[:2] == policy2.seen[:2]
    assert [t.example.uid for t in result.wins + result.losses] == [
        t.example.uid for t in again.wins + again.losses
    ]


def test_spear_rollout_verdict_only_skips_revisions():
    policy = ScriptedPolicy({_options(EX_FIX): ["car", "dog"]})
    result = _spear(policy, "feedback.provider=verdict_only").rollout([EX_FIX], CTX)
    assert result.wins == []
    assert [(t.text, t.confidence) for t in result.losses] == [("car", 0.5)]
    assert len(policy.calls) == 1


def test_spear_rollout_hints_false_uses_bare_hint():
    policy = ScriptedPolicy({_options(EX_FIX): ["car", "dog"]})
    result = _spear(policy, "feedback.hints=false").rollout([EX_FIX], CTX)
    assert [t.text for t in result.wins] == ["dog"]
    assert "You answered: car\nThat is not right.\n\n" in policy.seen[1]


# ----------------------------------------------------------------- oracle hint
@pytest.fixture(scope="module")
def eval_examples():
    return EmbeddedCategoryTask().load().eval


def test_oracle_hint_never_contains_gold_text(eval_examples):
    assert len(eval_examples) == 240
    checked = 0
    for ex in eval_examples:
        gold = re.compile(rf"\b{re.escape(ex.gold.lower())}\b")
        wrong_answers = [o for o in ex.options if o != ex.gold] + ["", "no idea", "zzz"]
        for completion in wrong_answers:
            fb = ORACLE.feedback(ex, completion)
            assert not fb.correct
            assert fb.hint and not gold.search(fb.hint.lower()), (ex, completion, fb.hint)
            named = re.fullmatch(
                r"That is not right\. It is not (.+), and it is not (.+)\.", fb.hint
            )
            assert named, fb.hint
            assert {named.group(1), named.group(2)} <= set(ex.options) - {ex.gold}
            assert named.group(1) != named.group(2)
            if completion in ex.options:
                assert named.group(1) == completion
            checked += 1
    assert checked == 240 * 6


def test_oracle_feedback_for_correct_answer_has_no_hint(eval_examples):
    ex = eval_examples[0]
    assert ORACLE.feedback(ex, ex.gold).correct
    assert ORACLE.feedback(ex, f"The {ex.gold.upper()}!").hint is None
