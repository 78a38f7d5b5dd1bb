"""SPEAR's client update: the no-wins skip rule, loss masks, and the micro-step loss maths."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch

from spearfl.algorithms.base import RoundContext
from spearfl.algorithms.rollout import Trace
from spearfl.algorithms.scoring import build_batch
from spearfl.algorithms.spear import SpearMicroStep, SpearUpdate
from spearfl.config import load_config
from spearfl.feedback.oracle import OracleFeedback
from spearfl.models.generation import Completion
from spearfl.tasks.base import Example
from spearfl.tasks.embedded import EmbeddedCategoryTask

TASK = EmbeddedCategoryTask()
ORACLE = OracleFeedback(TASK)
CPU = torch.device("cpu")

EXAMPLES = [
    Example(
        f"ex-{i}",
        "Which of these is an animal?",
        (f"cat{i}", "car", "red", "kiwi"),
        f"cat{i}",
        "animal",
    )
    for i in range(6)
]


class CharTokenizer:
    """One token per character (id = code point); id 0 pads, id 1 is EOS."""

    pad_token_id = 0
    eos_token_id = 1

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids if not (skip_special_tokens and i in (0, 1)))


class AlwaysWrongPolicy:
    """Answers "zzz" to everything; any attempt to train or read the adapter fails the test."""

    tokenizer = CharTokenizer()
    eos_id = 1
    device = CPU
    max_seq_len = 100_000

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.generated: Counter[int] = Counter()
        self.model = self

    def set_adapter(self, state):
        self.received.append(state)

    def get_adapter(self):
        raise AssertionError("no training: the adapter must not be read back")

    def trainable(self):
        raise AssertionError("no training: no parameters may be optimised")

    def train(self, mode=True):
        raise AssertionError("no training: the model must stay in eval mode")

    def encode(self, messages, assistant_prefix=""):
        return [ord(c) for c in messages[-1]["content"] + assistant_prefix]

    def generate(self, prompts, *, max_new_tokens, do_sample, stop_when=None, **sampling):
        self.generated[max_new_tokens] += len(prompts)
        return [Completion(tuple(p), (122, 122, 122), "zzz", True) for p in prompts]


def test_no_wins_returns_the_received_adapter_unchanged():
    cfg = load_config(
        None,
        [
            "fl.local_rollout_steps=4",
            "gen.num_revisions=1",
            "gen.max_new_tokens_y0=5",
            "gen.max_new_tokens_y1=6",
        ],
    )
    policy = AlwaysWrongPolicy()
    received = {"a": torch.tensor([1.0, -2.0]), "b": torch.zeros(2, 3)}
    snapshot = {k: v.clone() for k, v in received.items()}
    ctx = RoundContext(round_num=1, total_rounds=10, client_id=3, seed=42)
    result = SpearUpdate(cfg, policy, TASK, ORACLE).update(received, EXAMPLES, ctx)

    assert policy.received == [received]  # the global adapter was loaded before the rollout
    assert result.adapter.keys() == snapshot.keys()
    for key, tensor in snapshot.items():
        assert torch.equal(result.adapter[key], tensor)
    assert result.n_eff == 4.0  # number of rollouts, not max(1, #wins)
    m = result.metrics
    assert (m["wins"], m["losses"], m["losses_before_cap"]) == (0, 4, 4)
    assert (m["trained"], m["steps"], m["skipped_steps"], m["train_seconds"]) == (0, 0, 0, 0.0)
    assert (m["num_rollouts"], m["y0_correct"], m["y0_accuracy"]) == (4, 0, 0.0)
    assert m["y0_valid_rate"] == 0.0
    assert (m["revisions_attempted"], m["revisions_successful"]) == (4, 0)
    # 4 answers and 4 revisions of "zzz" + EOS each
    assert policy.generated == Counter({5: 4, 6: 4})
    assert m["tokens_generated"] == 8 * 4
    assert m["lr"] == pytest.approx(5e-5)  # round 1 of 10 = the single warmup round


def test_no_wins_with_fewer_examples_than_rollout_steps():
    cfg = load_config(None, ["fl.local_rollout_steps=80", "feedback.provider=verdict_only"])
    result = SpearUpdate(cfg, AlwaysWrongPolicy(), TASK, ORACLE).update(
        {"a": torch.ones(1)}, EXAMPLES[:3], RoundContext(2, 5, 0, 1)
    )
    assert result.n_eff == 3.0
    assert result.metrics["revisions_attempted"] == 0
    assert result.metrics["losses"] == 3


# ------------------------------------------------------------------- loss_flags
class _FlagPolicy:
    tokenizer = CharTokenizer()


def _trace(text: str) -> Trace:
    return Trace(EXAMPLES[0], (5, 6), tuple(ord(c) for c in text), text, 0.5)


def test_loss_flags_answer_only_marks_the_answer_characters():
    cfg = load_config(None, ["spear.ul_answer_only=true"])
    spear = SpearUpdate(cfg, _FlagPolicy(), TASK, ORACLE)
    # the extracted answer of "car" is the option "car": all three tokens
    assert spear.loss_flags(_trace("car")) == [True, True, True]
    # "The car." normalises to "car"; only the characters of "car" are flagged
    assert spear.loss_flags(_trace("The car.")) == [False] * 4 + [True] * 3 + [False]


def test_loss_flags_fall_back_to_tail_and_default_to_all():
    tail = SpearUpdate(
        load_config(None, ["spear.ul_answer_only=true", "spear.ul_tail_tokens=2"]),
        _FlagPolicy(),
        TASK,
        ORACLE,
    )
    # no option in the text: no answer span, so the last two tokens
    assert tail.loss_flags(_trace("hmm")) == [False, True, True]
    plain = SpearUpdate(load_config(None, []), _FlagPolicy(), TASK, ORACLE)
    assert plain.loss_flags(_trace("a red")) == [True] * 5


# ------------------------------------------------------------ micro-step maths
class _ModelPolicy:
    """Just what ``SpearMicroStep`` touches, around a tiny random Llama."""

    tokenizer = CharTokenizer()
    eos_id = 1
    device = CPU

    def __init__(self, model):
        self.model = model

    def trainable(self):
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(99)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=32,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    model = LlamaForCausalLM(config).eval()
    # a sharper output head: the model's favourite tokens get probabilities above 0.3
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return model


def _token_probs(model, prompt, completion) -> list[float]:
    """p(completion token j) from one plain forward pass of prompt + completion."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([list(prompt) + list(completion)])).logits[0]
    probs = torch.softmax(logits.double(), dim=-1)
    return [float(probs[len(prompt) + j - 1, t]) for j, t in enumerate(completion)]


def _continue(model, prompt, picks: str) -> tuple[int, ...]:
    """Tokens after ``prompt``: 'g' takes the most likely next token, 'u' the least likely."""
    seq = list(prompt)
    for pick in picks:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
        seq.append(int(logits.argmax() if pick == "g" else logits.argmin()))
    return tuple(seq[len(prompt) :])


WINS = [
    Trace(EXAMPLES[0], (5, 6, 10, 11, 12), (20, 21), "w0"),
    Trace(EXAMPLES[1], (5, 6, 13), (22, 23, 24), "w1"),
]
FLAGS = [[True, False, True], [True, True]]


@pytest.fixture(scope="module")
def losses(tiny_llama):
    """Two wrong answers whose flagged tokens lie on both sides of the 0.3 margin.

    All four prompts start with (5, 6): a whole micro-batch shares that prefix, a one-row chunk
    does not, so the chunking test also compares the shared-prefix and plain layouts.
    """
    p0, p1 = (5, 6, 31, 32), (5, 6, 33)
    return [
        Trace(EXAMPLES[2], p0, _continue(tiny_llama, p0, "ggg"), "l0", 1.0),
        Trace(EXAMPLES[3], p1, _continue(tiny_llama, p1, "gu"), "l1", 0.5),
    ]


def _win_part(model) -> float:
    nll, count = 0.0, 0
    for t in WINS:
        completion = (*t.completion_ids, 1)  # EOS appended to every win
        nll += sum(-math.log(p) for p in _token_probs(model, t.prompt_ids, completion))
        count += len(completion)
    return nll / count


def _lose_part(model, losses, margin) -> float:
    ul, count = 0.0, 0
    for t, flags in zip(losses, FLAGS, strict=True):
        probs = _token_probs(model, t.prompt_ids, t.completion_ids)  # no EOS on losses
        for p, flag in zip(probs, flags, strict=True):
            count += flag
            if flag and p > margin:
                ul += -math.log(1.0 - p)
    mean_conf = (1.0 + 0.5) / 2
    return ul / count * mean_conf


def _step(model, losses, *overrides):
    cfg = load_config(None, ["optim.batch_size=2", *overrides])
    spear = SpearUpdate(cfg, _ModelPolicy(model), TASK, ORACLE)
    reference = {n: p.detach() + 0.01 for n, p in spear.policy.trainable().items()}
    step = SpearMicroStep(
        spear.policy, spear.weights(), cfg.optim, WINS, losses, FLAGS, reference, random.Random(0)
    )
    model.zero_grad(set_to_none=True)
    value = step(1.0)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return value, step, grads


def test_micro_step_unlikelihood_part(tiny_llama, losses):
    flagged = [
        p
        for t, f in zip(losses, FLAGS, strict=True)
        for p, flag in zip(_token_probs(tiny_llama, t.prompt_ids, t.completion_ids), f, strict=True)
        if flag
    ]
    # two flagged tokens above the 0.3 margin, two below, none close to it
    assert sorted(p > 0.3 for p in flagged) == [False, False, True, True]
    assert all(abs(p - 0.3) > 0.05 for p in flagged)
    value, step, _ = _step(tiny_llama, losses, "spear.lambda_win=0", "spear.lambda_lose=0.7")
    expected = 0.7 * _lose_part(tiny_llama, losses, 0.3)
    assert expected > 0.1
    assert value == pytest.approx(expected, rel=1e-4)
    assert step.lose_parts[0] == pytest.approx(expected / 0.7, rel=1e-4)
    assert step.win_parts == [0.0]


def test_micro_step_win_part(tiny_llama, losses):
    value, step, _ = _step(tiny_llama, losses, "spear.lambda_win=1.5", "spear.lambda_lose=0")
    assert value == pytest.approx(1.5 * _win_part(tiny_llama), rel=1e-4)
    assert step.lose_parts == [0.0]


def test_micro_step_full_loss_with_anchor(tiny_llama, losses):
    value, step, _ = _step(
        tiny_llama,
        losses,
        "spear.lambda_win=1.0",
        "spear.lambda_lose=0.4",
        "spear.lambda_anchor=2.0",
        "spear.unlikelihood_margin=0.5",
    )
    # every trainable element is 0.01 from the reference: mean squared distance 1e-4
    expected = _win_part(tiny_llama) + 0.4 * _lose_part(tiny_llama, losses, 0.5) + 2.0 * 1e-4
    assert value == pytest.approx(expected, rel=1e-5)


def test_micro_step_chunking_keeps_loss_and_gradient(tiny_llama, losses):
    rows = [(t.prompt_ids, t.completion_ids) for t in WINS + losses]
    assert build_batch(rows, 0, CPU).prefix_ids.tolist() == [[5, 6]]
    common = ["spear.lambda_lose=0.5", "spear.lambda_anchor=1.0"]
    whole, _, g_whole = _step(tiny_llama, losses, *common)
    chunked, _, g_chunked = _step(tiny_llama, losses, *common, "optim.micro_batch_size=1")
    assert chunked == pytest.approx(whole, rel=1e-5)
    assert g_whole.keys() == g_chunked.keys() and g_whole
    for name, grad in g_whole.items():
        torch.testing.assert_close(g_chunked[name], grad, rtol=1e-4, atol=1e-6)
