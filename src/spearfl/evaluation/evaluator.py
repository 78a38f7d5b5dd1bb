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

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from spearfl.evaluation.frozen_states import (
    FROZEN_STATES_BUDGET,
    FrozenPromptStates,
    frozen_states_bytes,
)
from spearfl.evaluation.options import option_loglik
from spearfl.models.generation import (
    PrefixRunner,
    answer_stop,
    common_prefix_length,
    decode,
    sample_next,
    stop_token_ids,
)
from spearfl.models.policy import Policy, fit_prompts, question_prompts
from spearfl.models.prompts import text_ids
from spearfl.models.trunk import Trunk
from spearfl.tasks.base import LETTERS, Example, Task

log = logging.getLogger(__name__)


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


def letter_token_ids(
    tokenizer: PreTrainedTokenizerBase, letters: Sequence[str], chat: bool
) -> dict[str, int]:
    """The token of each answer letter as it follows the prompt. The letters must be single,
    distinct tokens, or their log-probabilities would not compare the answers.

    A base-model prompt ends with ``Answer:``, so its letters come as ``" A"``; a chat prompt
    ends with the assistant header, where the letter starts the reply: ``"A"``.
    """
    lead = "" if chat else " "
    pieces = {x: text_ids(tokenizer, lead + x) for x in letters}
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
        reuse_frozen_states: bool = True,
    ) -> None:
        self.policy, self.task = policy, task
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        prompts = question_prompts(policy, task, examples)
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
        self.options: list[list[list[int]]] | None = None
        if task.eval_method == "option_text":
            self.options = [
                [[*text_ids(policy.tokenizer, o), policy.eos_id] for o in ex.options]
                for ex in self.examples
            ]
        # Batches of similar lengths (little padding), the same ones at every evaluation.
        order = sorted(range(len(self.prompts)), key=lambda i: len(self.prompts[i]))
        self.batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        self.reuse_frozen_states = reuse_frozen_states
        self._frozen: FrozenPromptStates | None = None

    def frozen_states(self) -> FrozenPromptStates | None:
        """The prompts' frozen-layer states (:mod:`spearfl.evaluation.frozen_states`), built at
        the first evaluation; None when no layer is frozen, the architecture is not supported,
        or they would exceed ``FROZEN_STATES_BUDGET`` (the whole model runs then)."""
        if self._frozen is not None or not self.reuse_frozen_states:
            return self._frozen
        trunk = Trunk.of(self.policy.model)
        if trunk is None or not self.prompts:
            self.reuse_frozen_states = False
            return None
        prefix = common_prefix_length(self.prompts)
        size = frozen_states_bytes(
            trunk,
            sum(len(p) - prefix for p in self.prompts),
            sum(len(o) for opts in self.options or [] for o in opts),
        )
        if size > FROZEN_STATES_BUDGET:
            log.info("evaluation runs the whole model: frozen states would take %d MB", size >> 20)
            self.reuse_frozen_states = False
            return None
        self._frozen = FrozenPromptStates(
            trunk, self.prompts, self.batches, self.policy.tokenizer.pad_token_id, self.options
        )
        return self._frozen

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
        """One prefill per batch, shared by scoring and greedy decoding. ``scorer(index, rows,
        state)`` scores batch ``index`` (example indices ``rows``) from its prefill."""
        model, tok = self.policy.model, self.policy.tokenizer
        stop = stop_token_ids(tok, model)
        pad = tok.pad_token_id
        frozen = self.frozen_states()
        if frozen is not None:
            frozen.start()
            prefill = frozen.prefill
        else:
            runner = PrefixRunner(model, self.prompts, pad)
            prefill = lambda index: runner.prefill(  # noqa: E731
                [self.prompts[i] for i in self.batches[index]]
            )
        stop_when = answer_stop(tok, self.task)
        texts: list[str] = [""] * len(self.examples)
        scores: list[list[float]] = [[] for _ in self.examples]
        for index, rows in enumerate(self.batches):
            state = prefill(index)
            if scorer is not None:
                for i, row in zip(rows, scorer(index, rows, state)):
                    scores[i] = row
            if greedy:
                new, _ = decode(
                    model,
                    state,
                    max_new_tokens=[self.budgets[i] for i in rows],
                    stop_ids=stop,
                    pad_id=pad,
                    pick=lambda lg: sample_next(lg, False, 1.0, 1.0),
                    stop_when=stop_when,
                )
                for i, ids in zip(rows, new):
                    texts[i] = tok.decode(ids, skip_special_tokens=True)
        return texts, scores

    @staticmethod
    def _argmax(scores: list[list[float]]) -> list[int]:
        return [max(range(len(s)), key=s.__getitem__) for s in scores]

    def letter_scores(self) -> list[list[float]]:
        """Per example, the log-probability of each of its own letters as the next token."""

        def score(index, chunk, state):
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

    def option_outputs(self) -> tuple[list[str], list[list[float]]]:
        """Each example's greedy answer and its options' log-likelihoods, from one prefill per
        batch (of the adapted layers only, when the frozen layers' states are kept)."""
        pad = self.policy.tokenizer.pad_token_id

        def score(index, chunk, state):
            options = [self.options[i] for i in chunk]
            if self._frozen is not None:
                return self._frozen.option_scores(index, state, options)
            return option_loglik(self.policy.model, state, options, pad)

        return self._run(greedy=True, scorer=score)

    def _option_text(self) -> dict:
        texts, scores = self.option_outputs()
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
