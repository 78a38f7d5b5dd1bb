"""Batched generation that keeps exact token ids and computes a shared prompt prefix once.

Every prompt of a task starts with the same tokens (chat header, system prompt, instructions,
worked example). On a CPU, prefill dominates short answers, so the common prefix is run once,
its KV cache copied to each batch, and only the differing suffixes are processed. Hugging Face
``generate`` cannot share a prefix across prompts whose suffixes differ in length (left padding
would have to sit between prefix and suffix), hence this small decoding loop: layout
``[prefix][pad…][suffix]`` with the pads masked out and position ids counted over real tokens,
so every sequence sees exactly the positions it would see alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Completion:
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    """Generated tokens up to (not including) the first end-of-sequence token."""
    text: str
    finished: bool
    """Whether the model ended the answer itself (EOS), rather than hitting its token budget or
    being stopped once its answer was declared (``stop_when``)."""

    @property
    def num_generated(self) -> int:
        return len(self.completion_ids) + (1 if self.finished else 0)


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> set[int]:
    ids = set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists into left-padded ``input_ids`` and ``attention_mask``."""
    width = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix all prompts share, leaving each at least one own token."""
    if not prompts:
        return 0
    first = prompts[0]
    limit = min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return max(0, n)


def sample_next(
    logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float
) -> torch.Tensor:
    """Greedy, or temperature + nucleus (top-p) sampling, from last-position logits [B, V]."""
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / max(temperature, 1e-5), dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        # Keep the smallest set of tokens whose mass reaches top_p (always the top one).
        drop = sorted_probs.cumsum(-1) - sorted_probs > top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1).squeeze(-1)


@dataclass
class PrefillState:
    """What a batch's prefill leaves behind: cache, masks and the next-token logits."""

    cache: object
    attention_mask: torch.Tensor
    next_position: torch.Tensor
    logits: torch.Tensor


class PrefixRunner:
    """Runs batches of prompts that share a prefix, computing the prefix's KV cache once."""

    def __init__(self, model: PreTrainedModel, prompts: Sequence[Sequence[int]], pad_id: int):
        self.model = model
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.prefix_len = common_prefix_length(prompts)
        self.prefix_cache = None
        if self.prefix_len:
            prefix = torch.tensor([list(prompts[0][: self.prefix_len])], device=self.device)
            out = model(input_ids=prefix, use_cache=True, logits_to_keep=1)
            self.prefix_cache = out.cache

    def prefill(self, prompts: Sequence[Sequence[int]]) -> PrefillState:
        p = self.prefix_len
        ids, mask = left_pad([list(q[p:]) for q in prompts], self.pad_id, self.device)
        b = ids.shape[0]
        positions = p + (mask.cumsum(-1) - 1).clamp(min=0)
        cache = None
        if self.prefix_cache is not None:
            cache = copy.deepcopy(self.prefix_cache)
            cache.batch_repeat_interleave(b)
            mask = torch.cat([torch.ones((b, p), dtype=mask.dtype, device=self.device), mask], 1)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return PrefillState(out.cache, mask, positions[:, -1] + 1, out.logits[:, -1])


STOP_CHECK_EVERY = 4
"""Steps between answer-complete checks. The check needs text, hence the tokens on the host;
between checks the loop never waits for the device. A row found complete is cut back to the
exact token where it first was, so the result does not depend on this number; at most
``STOP_CHECK_EVERY - 1`` forward steps are spent past the batch's last answer."""


class AnswerStop:
    """Ends a sequence once the task says its answer is declared (``task.answer_complete``).

    Shared by rollouts and evaluation, so a completion means the same thing in both. Only the
    last ``window`` tokens are decoded: only they can have completed a declaration just now.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        answer_complete: Callable[[str], bool],
        window: int = 12,
    ) -> None:
        self.tokenizer, self.answer_complete, self.window = tokenizer, answer_complete, window

    def _complete(self, ids: Sequence[int]) -> bool:
        return self.answer_complete(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def __call__(self, ids: Sequence[int]) -> bool:
        """Whether the sequence ``ids`` has just completed its answer."""
        return self._complete(ids[-self.window :])

    def first_stop(self, ids: Sequence[int], since: int) -> int | None:
        """The smallest ``n`` in ``(since, len(ids)]`` with ``self(ids[:n])``, else None.

        One decode of everything that could matter rules out most rows at once; only a row
        whose text does hold a finished answer is scanned token by token.
        """
        if len(ids) <= since or not self._complete(ids[max(0, since + 1 - self.window) :]):
            return None
        for n in range(since + 1, len(ids) + 1):
            if self(ids[:n]):
                return n
        return None


def answer_stop(tokenizer: PreTrainedTokenizerBase, task) -> AnswerStop | None:
    """The stop rule of ``task`` (None for a task without an answer marker: decode to EOS)."""
    if getattr(task, "answer_marker", None) is None:
        return None
    return AnswerStop(tokenizer, task.answer_complete)


def row_budgets(max_new_tokens: int | Sequence[int], rows: int) -> list[int]:
    """One token budget per row: a single number applies to every row."""
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * rows
    budgets = [int(n) for n in max_new_tokens]
    if len(budgets) != rows:
        raise ValueError(f"{len(budgets)} token budgets for {rows} prompts")
    return budgets


@torch.no_grad()
def decode(
    model: PreTrainedModel,
    state: PrefillState,
    *,
    max_new_tokens: int | Sequence[int],
    stop_ids: set[int],
    pad_id: int,
    pick: Callable[[torch.Tensor], torch.Tensor],
    stop_when: AnswerStop | Callable[[list[int]], bool] | None = None,
    check_every: int = STOP_CHECK_EVERY,
) -> tuple[list[list[int]], list[bool]]:
    """Continue from a prefill until every sequence stops or hits its token budget.

    ``max_new_tokens`` is one budget for all rows or one per row. ``stop_when`` ends a
    sequence early once what it generated is enough (its answer is declared): no tokens are
    kept that nobody reads. EOS, budgets and the done flags are tensor operations; the tokens
    go into a preallocated tensor read back once at the end. The only host reads are one flag
    per step (all rows done?) and, with ``stop_when``, the tokens every ``check_every`` steps.
    ``stop_when(ids)`` says whether ``ids`` just completed an answer; an :class:`AnswerStop`
    also rules out many new tokens with one decode (``first_stop``).
    """
    b = state.logits.shape[0]
    device = state.logits.device
    budget_list = row_budgets(max_new_tokens, b)
    steps = max(budget_list, default=0)
    if steps <= 0:
        return [[] for _ in range(b)], [False] * b
    budget = torch.tensor(budget_list, device=device)
    out = torch.full((b, steps), pad_id, dtype=torch.long, device=device)
    length = torch.zeros(b, dtype=torch.long, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    done = budget <= 0
    stop = torch.tensor(sorted(stop_ids), device=device)
    pad = torch.full((b,), pad_id, dtype=torch.long, device=device)
    # Rows whose answer may still complete, and the tokens of theirs already checked.
    open_rows = list(range(b)) if stop_when is not None else []
    checked = [0] * b
    cut: dict[int, int] = {}
    logits, mask, position, cache = (
        state.logits,
        state.attention_mask,
        state.next_position,
        state.cache,
    )
    for step in range(steps):
        nxt = torch.where(done, pad, pick(logits))
        is_stop = torch.isin(nxt, stop) & ~done
        keep = ~done & ~is_stop
        out[:, step] = torch.where(keep, nxt, pad)
        length += keep.long()
        finished |= is_stop
        done = done | is_stop | (step + 1 >= budget)
        last, all_done = step == steps - 1, bool(done.all())
        if open_rows and ((step + 1) % check_every == 0 or last or all_done):
            open_rows = _answer_check(stop_when, out, length, done, open_rows, checked, cut)
            if cut:
                done[torch.tensor(sorted(cut), device=device)] = True
                all_done = bool(done.all())
        if last or all_done:
            break
        mask = torch.cat([mask, (~done).long().unsqueeze(1)], dim=1)
        step_out = model(
            input_ids=nxt.unsqueeze(1),
            attention_mask=mask,
            position_ids=position.unsqueeze(1),
            cache=cache,
            use_cache=True,
        )
        cache, logits = step_out.cache, step_out.logits[:, -1]
        position = position + 1
    lengths, ended = length.tolist(), finished.tolist()
    for row, n in cut.items():
        lengths[row], ended[row] = n, False
    rows = out.tolist()
    return [rows[r][: lengths[r]] for r in range(b)], ended


def _first_stop(stop_when, ids: list[int], since: int) -> int | None:
    """The first length in ``(since, len(ids)]`` at which ``stop_when`` fires, else None."""
    if isinstance(stop_when, AnswerStop):
        return stop_when.first_stop(ids, since)
    return next((n for n in range(since + 1, len(ids) + 1) if stop_when(ids[:n])), None)


def _answer_check(
    stop_when,
    out: torch.Tensor,
    length: torch.Tensor,
    done: torch.Tensor,
    open_rows: list[int],
    checked: list[int],
    cut: dict[int, int],
) -> list[int]:
    """Record in ``cut`` the rows that completed their answer since the last check (at the
    first token where they did) and return the rows still open."""
    tokens = out[open_rows].tolist()
    lengths = length[open_rows].tolist()
    was_done = done[open_rows].tolist()
    still = []
    for row, ids, n, over in zip(open_rows, tokens, lengths, was_done):
        at = _first_stop(stop_when, ids[:n], checked[row])
        checked[row] = n
        if at is not None:
            cut[row] = at
        elif not over:
            still.append(row)
    return still


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int | Sequence[int],
    do_sample: bool,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    stop_when: AnswerStop | None = None,
) -> list[Completion]:
    """Generate one completion per prompt (token ids in, token ids and text out).

    ``max_new_tokens`` is one budget for every prompt or one per prompt; ``stop_when`` ends a
    completion once its answer is declared (see :func:`answer_stop`).
    """
    budgets = row_budgets(max_new_tokens, len(prompts))
    stop = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop)
    was_training = model.training
    model.eval()
    runner = PrefixRunner(model, prompts, pad_id)
    # Sorting by length keeps padding (wasted prefill) small; results go back in order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: dict[int, Completion] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        state = runner.prefill([prompts[i] for i in chunk])
        new, finished = decode(
            model,
            state,
            max_new_tokens=[budgets[i] for i in chunk],
            stop_ids=stop,
            pad_id=pad_id,
            pick=lambda logits: sample_next(logits, do_sample, temperature, top_p),
            stop_when=stop_when,
        )
        for row, idx in enumerate(chunk):
            results[idx] = Completion(
                prompt_ids=tuple(prompts[idx]),
                completion_ids=tuple(new[row]),
                text=tokenizer.decode(new[row], skip_special_tokens=True),
                finished=finished[row],
            )
    if was_training:
        model.train()
    return [results[i] for i in range(len(prompts))]
