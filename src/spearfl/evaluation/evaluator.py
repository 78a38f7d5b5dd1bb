"""Held-out evaluation of the current adapter, batched.

- ``letter_loglik`` (letter tasks): one forward pass per question; the letters are compared by
  their log-probability at the answer position.
- ``generative``: greedy decoding and last-declared answer extraction.
- ``option_text`` (the embedded task): greedy exact match (what the model actually answers) and
  option log-likelihood accuracy (which option text it finds most likely), which separates
  content learning from format learning. The prompt is run once per question and its KV cache
  shared by the four options.

Every method also returns each question's outcome as a list of 0/1 in the order of the eval
examples (``correct`` for ``accuracy``; ``option_correct`` for ``option_accuracy``), so that
reports can pair two runs question by question (:mod:`spearfl.reporting.records`).
"""

from __future__ import annotations

import copy
import time
from collections import Counter, defaultdict
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from spearfl.models.generation import (
    PrefillState,
    PrefixRunner,
    answer_stop,
    decode,
    sample_next,
    stop_token_ids,
)
from spearfl.models.policy import Policy, fit_prompts
from spearfl.tasks.base import LETTERS, Example, Task


def _rate(hits: Sequence[bool]) -> float:
    return sum(hits) / len(hits) if hits else 0.0


def _record(hits: Sequence[bool]) -> list[int]:
    """Per-question outcomes as 0/1: compact in JSON, and what paired statistics resample."""
    return [int(bool(hit)) for hit in hits]


def _breakdown(examples: Sequence[Example], hits: Sequence[bool], key) -> dict[str, float]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for ex, hit in zip(examples, hits):
        groups[str(key(ex))].append(hit)
    return {k: round(_rate(v), 4) for k, v in sorted(groups.items())}


@torch.no_grad()
def option_loglik(
    model, state: PrefillState, options: Sequence[Sequence[Sequence[int]]], pad_id: int
) -> list[list[float]]:
    """Sum of log-probabilities of each option's tokens, continuing a prompt prefill.

    The prompt's cache is copied once per option, so the prompt itself is never re-run.
    """
    device = state.logits.device
    n_opt = max(len(o) for o in options)
    first = torch.log_softmax(state.logits.float(), -1).repeat_interleave(n_opt, 0)
    cache = copy.deepcopy(state.cache)
    cache.batch_repeat_interleave(n_opt)
    flat = [opts[j] if j < len(opts) else [pad_id] for opts in options for j in range(n_opt)]
    width = max(len(o) for o in flat)
    opt_ids = torch.full((len(flat), width), pad_id, dtype=torch.long)
    opt_mask = torch.zeros((len(flat), width), dtype=torch.long)
    for row, toks in enumerate(flat):
        opt_ids[row, : len(toks)] = torch.tensor(list(toks))
        opt_mask[row, : len(toks)] = 1
    opt_ids, opt_mask = opt_ids.to(device), opt_mask.to(device)
    attn = torch.cat([state.attention_mask.repeat_interleave(n_opt, 0), opt_mask], dim=1)
    start = state.next_position.repeat_interleave(n_opt).unsqueeze(1)
    positions = start + torch.arange(width, device=device).unsqueeze(0)
    out = model(
        input_ids=opt_ids, attention_mask=attn, position_ids=positions, cache=cache, use_cache=False
    )
    logp = torch.log_softmax(out.logits.float(), -1)
    scores = []
    for q, opts in enumerate(options):
        row_scores = []
        for j, toks in enumerate(opts):
            r = q * n_opt + j
            total = float(first[r, toks[0]])
            for t in range(1, len(toks)):
                total += float(logp[r, t - 1, toks[t]])
            row_scores.append(total)
        scores.append(row_scores)
    return scores


def letter_token_ids(
    tokenizer: PreTrainedTokenizerBase, letters: Sequence[str], chat: bool
) -> dict[str, int]:
    """The token of each answer letter as it follows the prompt. The letters must be single,
    distinct tokens, or their log-probabilities would not compare the answers.

    A base-model prompt ends with ``Answer:``, so its letters come as ``" A"``; a chat prompt
    ends with the assistant header, where the letter starts the reply: ``"A"``.
    """
    lead = "" if chat else " "
    pieces = {x: list(tokenizer(lead + x, add_special_tokens=False)["input_ids"]) for x in letters}
    firsts = [ids[0] for ids in pieces.values() if ids]
    if any(len(ids) != 1 for ids in pieces.values()) or len(set(firsts)) != len(firsts):
        name = tokenizer.name_or_path or type(tokenizer).__name__
        shown = ", ".join(f"{lead + x!r} -> {ids}" for x, ids in pieces.items())
        raise ValueError(
            "letter evaluation needs every answer letter to be one token of its own, but "
            f"tokenizer {name} encodes {shown}"
        )
    return {x: ids[0] for x, ids in pieces.items()}


class Evaluator:
    """Scores the policy's current adapter on a fixed list of eval examples."""

    def __init__(
        self,
        policy: Policy,
        task: Task,
        examples: Sequence[Example],
        *,
        batch_size: int,
        max_new_tokens: int,
        skip_bad_rows: bool = False,
    ) -> None:
        self.policy, self.task = policy, task
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        prompts = [policy.encode(task.messages(e), task.assistant_prefix(e)) for e in examples]
        # An eval question too long to answer is an error, or with data.skip_bad_rows left out
        # of every evaluation (the same ones each time, so records stay paired) and counted.
        kept = fit_prompts(
            prompts,
            examples,
            max_seq_len=policy.max_seq_len,
            task_name=task.name,
            kind="evaluation",
            skip=skip_bad_rows,
        )
        self.examples = [examples[i] for i in kept]
        self.prompts = [prompts[i] for i in kept]
        self.skipped_prompts = len(prompts) - len(kept)
        self.budgets = policy.token_budgets(self.prompts, max_new_tokens)
        self.letter_ids: list[list[int]] = []
        if task.eval_method == "letter_loglik":
            letters = LETTERS[: max((len(e.options) for e in self.examples), default=0)]
            ids = letter_token_ids(policy.tokenizer, letters, policy.formatter.use_chat_template)
            self.letter_ids = [[ids[x] for x in LETTERS[: len(e.options)]] for e in self.examples]

    def _encode_continuation(self, text: str) -> list[int]:
        return list(self.policy.tokenizer(text, add_special_tokens=False)["input_ids"])

    def evaluate(self) -> dict:
        start = time.perf_counter()
        method = self.task.eval_method
        was_training = self.policy.model.training
        self.policy.model.eval()
        try:
            if method == "letter_loglik":
                result = self._letters()
            elif method == "generative":
                result = self._generative()
            else:
                result = self._option_text()
        finally:
            self.policy.model.train(was_training)
        result["method"] = method
        result["n"] = len(self.examples)
        result["skipped_prompts"] = self.skipped_prompts
        result["seconds"] = round(time.perf_counter() - start, 2)
        return result

    @torch.no_grad()
    def _run(self, *, greedy: bool, scorer=None) -> tuple[list[str], list[list[float]]]:
        """One prefill per batch, shared by option scoring and greedy decoding."""
        model, tok = self.policy.model, self.policy.tokenizer
        stop = stop_token_ids(tok, model)
        pad = tok.pad_token_id
        runner = PrefixRunner(model, self.prompts, pad)
        stop_when = answer_stop(tok, self.task)
        texts: list[str] = [""] * len(self.examples)
        scores: list[list[float]] = [[] for _ in self.examples]
        order = sorted(range(len(self.prompts)), key=lambda i: len(self.prompts[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            state = runner.prefill([self.prompts[i] for i in chunk])
            if scorer is not None:
                for i, row in zip(chunk, scorer(chunk, state)):
                    scores[i] = row
            if greedy:
                new, _ = decode(
                    model,
                    state,
                    max_new_tokens=[self.budgets[i] for i in chunk],
                    stop_ids=stop,
                    pad_id=pad,
                    pick=lambda lg: sample_next(lg, False, 1.0, 1.0),
                    stop_when=stop_when,
                )
                for i, ids in zip(chunk, new):
                    texts[i] = tok.decode(ids, skip_special_tokens=True)
        return texts, scores

    @staticmethod
    def _argmax(scores: list[list[float]]) -> list[int]:
        return [max(range(len(s)), key=s.__getitem__) for s in scores]

    def letter_scores(self) -> list[list[float]]:
        """Per example, the log-probability of each of its own letters as the next token."""

        def score(chunk, state):
            logp = torch.log_softmax(state.logits.float(), -1)
            return [[float(logp[r, c]) for c in self.letter_ids[i]] for r, i in enumerate(chunk)]

        return self._run(greedy=False, scorer=score)[1]

    def _letters(self) -> dict:
        preds = self._argmax(self.letter_scores())
        hits = [p == ex.gold_index for p, ex in zip(preds, self.examples)]
        return {
            "accuracy": round(_rate(hits), 4),
            "correct": _record(hits),
            "by_position": _breakdown(self.examples, hits, lambda e: e.gold_index),
            "predicted_positions": dict(sorted(Counter(map(str, preds)).items())),
        }

    def answers(self) -> list[str]:
        """Each example's greedy completion, stopped at EOS or once its answer is complete."""
        return self._run(greedy=True)[0]

    def _generative(self) -> dict:
        texts = self.answers()
        hits = [self.task.is_correct(ex, t) for ex, t in zip(self.examples, texts)]
        valid = [self.task.extract_answer(ex, t) is not None for ex, t in zip(self.examples, texts)]
        return {
            "accuracy": round(_rate(hits), 4),
            "correct": _record(hits),
            "valid_rate": round(_rate(valid), 4),
        }

    def _option_text(self) -> dict:
        eos = self.policy.eos_id
        pad = self.policy.tokenizer.pad_token_id
        options = [
            [[*self._encode_continuation(o), eos] for o in ex.options] for ex in self.examples
        ]

        def score(chunk, state):
            return option_loglik(self.policy.model, state, [options[i] for i in chunk], pad)

        texts, scores = self._run(greedy=True, scorer=score)
        answers = [self.task.extract_answer(ex, t) for ex, t in zip(self.examples, texts)]
        hits = [a == ex.gold for a, ex in zip(answers, self.examples)]
        ll_hits = [p == ex.gold_index for p, ex in zip(self._argmax(scores), self.examples)]
        chosen = Counter(
            str(ex.options.index(a)) for a, ex in zip(answers, self.examples) if a is not None
        )
        category = lambda e: e.meta.get("category", e.label)  # noqa: E731
        return {
            "accuracy": round(_rate(hits), 4),
            "correct": _record(hits),
            "option_accuracy": round(_rate(ll_hits), 4),
            "option_correct": _record(ll_hits),
            "valid_rate": round(_rate([a is not None for a in answers]), 4),
            "by_position": _breakdown(self.examples, hits, lambda e: e.gold_index),
            "by_category": _breakdown(self.examples, hits, category),
            "option_by_position": _breakdown(self.examples, ll_hits, lambda e: e.gold_index),
            "answered_positions": dict(sorted(chosen.items())),
        }
