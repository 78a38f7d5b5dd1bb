"""The Evaluator against hand computations from plain forward passes, on the real tokenizers.

Batches mix prompt lengths, so the shared-prefix cache and the left padding are both in play;
every number is recomputed here with ``model(input_ids)`` on one unpadded sequence.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spearfl.config import load_config
from spearfl.evaluation.evaluator import Evaluator
from spearfl.evaluation.options import option_loglik
from spearfl.models.generation import STOP_CHECK_EVERY, PrefixRunner
from spearfl.models.policy import Policy
from spearfl.models.prompts import plain_text
from spearfl.tasks.arc import ArcChallengeTask
from spearfl.tasks.base import Example
from spearfl.tasks.embedded import EmbeddedCategoryTask
from spearfl.tasks.math_mcqa import MathMCQATask
from spearfl.tasks.strategyqa import StrategyQATask

ARC = ArcChallengeTask(path="unused")
SPACED_LETTER_IDS = {
    "qwen2": {"A": 362, "B": 425, "C": 356, "D": 422, "E": 468},
    "llama3": {"A": 362, "B": 426, "C": 356, "D": 423, "E": 469},
}
"""``" A"`` … ``" E"`` in each real vocabulary: the token after a base prompt's ``Answer:``."""

ARC_EXAMPLES = [
    Example("three", "Which is a gas?", ("ice", "steam", "stone"), "B", "B"),
    Example(
        "five",
        "Which of these tools would a student use to measure the mass of a small rock sample "
        "collected during a field trip to a river bank?",
        ("ruler", "balance", "thermometer", "graduated cylinder", "stopwatch"),
        "B",
        "B",
    ),
    Example("four", "What do plants need to make food?", ("sand", "light", "salt", "iron"), "B",
            "B"),
    Example("four-b", "Which planet of our solar system is closest to the Sun?",
            ("Mars", "Venus", "Mercury", "Earth"), "C", "C"),
]  # fmt: skip


def _policy(model_dir: Path, *extra: str) -> Policy:
    overrides = [f"model.model_name={model_dir}", "lora.last_n_layers=1", "lora.r=4", *extra]
    torch.manual_seed(0)
    return Policy.from_config(load_config(None, overrides))


@pytest.fixture(scope="module")
def paper_policy(tiny_paper_model_dir: Path) -> Policy:
    return _policy(tiny_paper_model_dir)


def _last_logprobs(policy: Policy, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = policy.model(torch.tensor([ids])).logits[0, -1]
    return torch.log_softmax(logits.float(), -1)


# ------------------------------------------------------------------ letter scoring
def test_letter_loglik_equals_a_plain_forward_pass(paper_policy, paper_family):
    evaluator = Evaluator(paper_policy, ARC, ARC_EXAMPLES, batch_size=3, max_new_tokens=1)
    scores = evaluator.letter_scores()
    letters = SPACED_LETTER_IDS[paper_family]
    tok = paper_policy.tokenizer
    lengths = set()
    for example, row in zip(ARC_EXAMPLES, scores, strict=True):
        # The prompt by hand: its base-model text, tokenised as the base model reads it.
        ids = tok(plain_text(ARC.messages(example)))["input_ids"]
        lengths.add(len(ids))
        logp = _last_logprobs(paper_policy, ids)
        own = "ABCDE"[: len(example.options)]  # 3 options: A-C only; 5 options: A-E
        expected = [float(logp[letters[x]]) for x in own]
        assert len(row) == len(example.options)
        assert row == pytest.approx(expected, abs=1e-4)
    assert len(lengths) == len(ARC_EXAMPLES)  # every prompt a different length

    result = evaluator.evaluate()
    picked = [max(range(len(r)), key=r.__getitem__) for r in scores]
    hits = [p == ex.gold_index for p, ex in zip(picked, ARC_EXAMPLES)]
    assert result["accuracy"] == round(sum(hits) / len(hits), 4)
    assert sum(result["predicted_positions"].values()) == 4
    # one 0/1 per question, in the examples' order: what paired statistics resample
    assert result["correct"] == [int(hit) for hit in hits]


def test_letter_scoring_refuses_letters_that_are_not_single_tokens(tmp_path):
    """A byte-level tokenizer without merges spells " A" as two tokens: no letter to score."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<eos>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, eos_token_id=vocab["<eos>"],
    )  # fmt: skip
    folder = tmp_path / "bytes-only"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    policy = _policy(folder)
    with pytest.raises(ValueError, match=r"one token of its own.*bytes-only encodes ' A' -> \["):
        Evaluator(policy, ARC, ARC_EXAMPLES, batch_size=2, max_new_tokens=1)
    # Generative tasks read text, not letter tokens: the same tokenizer is fine there.
    Evaluator(policy, StrategyQATask(path="unused"), [], batch_size=2, max_new_tokens=1)


# ------------------------------------------------------------- generative stopping
class ScriptedDecoding:
    """Forces the model's greedy choice: each prompt's row follows its own token script.

    A forward hook on the policy's model rewrites the next-token logits. A prefill call (one
    with ``logits_to_keep``) tells rows apart by the question text in their tokens; every later
    call is one decoding step. ``steps`` counts the decoding calls.
    """

    def __init__(self, policy: Policy, scripts: dict[str, list[int]]):
        self.policy, self.scripts = policy, scripts
        self.rows: list[list[int]] = []
        self.step = 0
        self.steps = 0
        self.handle = policy.model.register_forward_hook(self._force, with_kwargs=True)

    def _force(self, module, args, kwargs, output):
        ids = kwargs["input_ids"]
        if "logits_to_keep" in kwargs:
            if kwargs.get("attention_mask") is None:
                return output  # the shared prefix, before any row exists
            texts = self.policy.tokenizer.batch_decode(ids, skip_special_tokens=True)
            only = next(iter(self.scripts.values())) if len(self.scripts) == 1 else None
            self.rows = [only or next(s for q, s in self.scripts.items() if q in t) for t in texts]
            self.step = 0
        else:
            self.step += 1
            self.steps += 1
        logits = output.logits[:, -1]
        for row, script in enumerate(self.rows):
            logits[row] = -1e4
            logits[row, script[min(self.step, len(script) - 1)]] = 0.0
        return output

    def close(self) -> None:
        self.handle.remove()


def test_generative_evaluation_stops_after_the_answer_or_at_eos(paper_policy):
    task = StrategyQATask(path="unused")
    tok = paper_policy.tokenizer
    eos = paper_policy.eos_id
    examples = [
        Example("q1", "Do penguins live at the South Pole?", ("yes", "no"), "yes", "yes"),
        Example("q2", "Is the number seven, when written in Roman numerals, longer than three "
                "characters?", ("yes", "no"), "no", "no"),
        Example("q3", "Can cats fly?", ("yes", "no"), "no", "no"),
    ]  # fmt: skip

    def words(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    tail = words(" Then more text that nobody reads, and more, and more.")
    penguins = "Penguins live in Antarctica, near the South Pole. Answer: yes."
    scripts = {
        "penguins": words(penguins) + tail,
        "Roman": words("VII has three characters. Answer: no") + [eos] + tail,
        "cats": words("Let me think") + [eos] + words(" Answer: no.") + tail,
    }
    # The script rewrites the whole model's prefill, so the evaluation runs the whole model.
    evaluator = Evaluator(
        paper_policy, task, examples, batch_size=3, max_new_tokens=60, reuse_frozen_states=False
    )
    forced = ScriptedDecoding(paper_policy, scripts)
    try:
        texts = evaluator.answers()
        steps = forced.steps
        result = evaluator.evaluate()
    finally:
        forced.close()
    assert texts == [
        penguins,  # stopped one character after the answer word
        "VII has three characters. Answer: no",  # the model's EOS, before any further char
        "Let me think",  # EOS: nothing after it is generated, no answer declared
    ]
    # The longest row stopped at its "." (the batch ends with it): the tail was never decoded.
    # The answer check runs every STOP_CHECK_EVERY steps, so at most that many - 1 steps more.
    ends = len(words(penguins)) - 1
    assert ends <= steps <= ends + STOP_CHECK_EVERY - 1 < ends + len(tail)
    assert result["accuracy"] == round(2 / 3, 4) and result["valid_rate"] == round(2 / 3, 4)
    assert result["correct"] == [1, 1, 0]  # yes = yes, no = no, no answer declared


def test_a_reasoning_letter_answer_stops_once_the_letter_is_closed(paper_policy):
    task = MathMCQATask(path="unused")
    tok = paper_policy.tokenizer
    example = Example("m", "What is $2+3$?", ("$4$", "$5$", "$6$", "$7$"), "B", "B")
    script = tok("2+3=5, so Answer: B) and then more", add_special_tokens=False)["input_ids"]
    evaluator = Evaluator(
        paper_policy, task, [example], batch_size=1, max_new_tokens=60, reuse_frozen_states=False
    )
    forced = ScriptedDecoding(paper_policy, {"2+3": script})
    try:
        [text] = evaluator.answers()
    finally:
        forced.close()
    # "Answer: B" could still grow into "Be…"; the ")" after it closes the declaration.
    assert text == "2+3=5, so Answer: B)"


# ------------------------------------------------------------ option log-likelihood
@pytest.fixture(scope="module")
def chat_policy(tiny_model_dir: Path) -> Policy:
    return _policy(tiny_model_dir)


@pytest.mark.parametrize("which", ["chat", "plain"])
def test_option_loglik_equals_a_plain_forward_pass(which, chat_policy, tiny_paper_model_dir):
    policy = chat_policy if which == "chat" else _policy(tiny_paper_model_dir)
    task = EmbeddedCategoryTask()
    examples = task.load().eval[:3]
    tok = policy.tokenizer
    prompts = [policy.encode(task.messages(ex)) for ex in examples]
    options = [
        [[*tok(o, add_special_tokens=False)["input_ids"], policy.eos_id] for o in ex.options]
        for ex in examples
    ]
    assert len({len(p) for p in prompts}) > 1  # mixed prompt lengths: left padding is used
    assert len({len(o) for opts in options for o in opts}) > 1  # and mixed option lengths
    with torch.no_grad():  # as in evaluation
        runner = PrefixRunner(policy.model, prompts, tok.pad_token_id)
        state = runner.prefill(prompts)
    assert runner.prefix_len > 0  # the shared prefix runs once, from its cache
    scores = option_loglik(policy.model, state, options, tok.pad_token_id)
    for prompt, opts, row in zip(prompts, options, scores, strict=True):
        expected = []
        for option in opts:
            with torch.no_grad():
                logits = policy.model(torch.tensor([prompt + option])).logits[0]
            logp = torch.log_softmax(logits.float(), -1)
            start = len(prompt) - 1  # position predicting the option's first token
            expected.append(sum(float(logp[start + k, t]) for k, t in enumerate(option)))
        assert row == pytest.approx(expected, abs=1e-3)


def _option_scores_by_hand(policy: Policy, prompt: list[int], options: list[list[int]]):
    """Each option's summed log-probability after ``prompt``, from one plain forward pass."""
    scores = []
    for option in options:
        with torch.no_grad():
            logits = policy.model(torch.tensor([prompt + option])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        start = len(prompt) - 1
        scores.append(sum(float(logp[start + k, t]) for k, t in enumerate(option)))
    return scores


def test_option_text_records_both_outcomes_per_question(chat_policy):
    """Exact match of scripted answers, and the most likely option by plain forward passes."""
    task = EmbeddedCategoryTask()
    examples = task.load().eval[:4]
    wrong = next(o for o in examples[1].options if o != examples[1].gold)
    said = [examples[0].gold, wrong, "I am not sure", examples[3].gold.upper() + "."]
    evaluator = Evaluator(chat_policy, task, examples, batch_size=3, max_new_tokens=4)
    real_run = evaluator._run

    def scripted(*, greedy, scorer=None):  # the real prefill and scores, scripted answers
        _, scores = real_run(greedy=greedy, scorer=scorer)
        return said, scores

    evaluator._run = scripted
    result = evaluator.evaluate()

    tok = chat_policy.tokenizer
    likeliest = []
    for ex in examples:
        prompt = chat_policy.encode(task.messages(ex), task.assistant_prefix(ex))
        opts = [[*tok(o, add_special_tokens=False)["input_ids"], chat_policy.eos_id] for o in
                ex.options]  # fmt: skip
        row = _option_scores_by_hand(chat_policy, prompt, opts)
        likeliest.append(int(max(range(len(row)), key=row.__getitem__) == ex.gold_index))
    assert result["correct"] == [1, 0, 0, 1]  # case and a full stop are normalised away
    assert result["accuracy"] == 0.5 and result["valid_rate"] == 0.75
    assert result["option_correct"] == likeliest
    assert result["option_accuracy"] == round(sum(likeliest) / 4, 4)
