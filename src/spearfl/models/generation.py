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
    """Whether the model ended the answer itself (EOS) rather than hitting the token limit."""

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


@torch.no_grad()
def decode(
    model: PreTrainedModel,
    state: PrefillState,
    *,
    max_new_tokens: int,
    stop_ids: set[int],
    pad_id: int,
    pick: Callable[[torch.Tensor], torch.Tensor],
    stop_when: Callable[[list[int]], bool] | None = None,
) -> tuple[list[list[int]], list[bool]]:
    """Continue from a prefill until every sequence stops or hits ``max_new_tokens``.

    ``stop_when(tokens)`` ends a sequence early once what it generated is enough (e.g. it has
    declared its answer): no tokens are generated that nobody reads.
    """
    b = state.logits.shape[0]
    device = state.logits.device
    tokens: list[list[int]] = [[] for _ in range(b)]
    finished = [False] * b
    done = torch.zeros(b, dtype=torch.bool, device=device)
    stop = torch.tensor(sorted(stop_ids), device=device)
    logits, mask, position, cache = (
        state.logits,
        state.attention_mask,
        state.next_position,
        state.cache,
    )
    for step in range(max_new_tokens):
        nxt = pick(logits)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        is_stop = torch.isin(nxt, stop) & ~done
        for row, tok in enumerate(nxt.tolist()):
            if done[row]:
                continue
            if is_stop[row]:
                finished[row] = True
            else:
                tokens[row].append(tok)
        if stop_when is not None:
            for row in range(b):
                if not done[row] and not is_stop[row] and stop_when(tokens[row]):
                    is_stop[row] = True
        done = done | is_stop
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, (~done).long().unsqueeze(1)], dim=1)
        out = model(
            input_ids=nxt.unsqueeze(1),
            attention_mask=mask,
            position_ids=position.unsqueeze(1),
            cache=cache,
            use_cache=True,
        )
        cache, logits = out.cache, out.logits[:, -1]
        position = position + 1
    return tokens, finished


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 16,
) -> list[Completion]:
    """Generate one completion per prompt (token ids in, token ids and text out)."""
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
            max_new_tokens=max_new_tokens,
            stop_ids=stop,
            pad_id=pad_id,
            pick=lambda logits: sample_next(logits, do_sample, temperature, top_p),
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
