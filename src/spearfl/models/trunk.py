"""The frozen trunk: decoder layers below the first LoRA layer give the same states every round.

With LoRA on the last N of L layers (the embedded default: 8 of 30), the first L - N layers and
the embeddings are never trained. For a fixed token sequence, the hidden state entering the
first adapted layer and the keys/values of every layer below it are therefore the same in every
round, whatever adapter is loaded. What is computed once for such a sequence (the evaluation
set's prompts and options) can be reused by every later evaluation; only the adapted layers run.

A run of layers here calls the model's own decoder layers, rotary embedding, final norm and
LM head with the same inputs Hugging Face's forward gives them: position ids counted over real
tokens, a 4-D mask that lets each real token see the real tokens at or before it, and a
``DynamicCache`` the attention layers append to. Only what the forward would derive itself
(the mask) is built here. Supported: Llama and Qwen2 decoders (the paper's model families and
the embedded SmolLM2) with SDPA or eager attention and no sliding window; for anything else
:meth:`Trunk.of` returns None and callers run the plain forward.
"""

from __future__ import annotations

import re
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers import DynamicCache

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
SUPPORTED_ATTENTION = ("sdpa", "eager")
_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


def attention_mask_4d(mask: torch.Tensor, queries: int, attention: str, dtype) -> torch.Tensor:
    """``[B, 1, Q, K]`` mask for ``queries`` new tokens at the end of ``mask``'s ``K`` columns.

    A token sees the columns at or before its own that ``mask`` marks real. It always sees
    itself, so a padding row is never fully masked (its output is never read).
    """
    k = mask.shape[1]
    rows = torch.arange(k - queries, k, device=mask.device).unsqueeze(1)
    cols = torch.arange(k, device=mask.device).unsqueeze(0)
    allowed = (cols <= rows) & mask.bool()[:, None, :]
    allowed |= cols == rows
    allowed = allowed.unsqueeze(1)
    if attention == "sdpa":
        return allowed
    blocked = torch.zeros(allowed.shape, dtype=dtype, device=mask.device)
    return blocked.masked_fill(~allowed, torch.finfo(dtype).min)


def layer_kv(cache: DynamicCache, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values ``[B, heads, T, head_dim]`` that layer ``index`` holds in ``cache``."""
    layer = cache.layers[index]
    return layer.keys, layer.values


def cache_with(layers: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A cache holding the given layers' keys/values (the others are filled by later passes)."""
    cache = DynamicCache()
    for index in sorted(layers):
        keys, values = layers[index]
        cache.update(keys, values, index)
    return cache


@dataclass(frozen=True)
class Trunk:
    """The frozen layers (``depth`` of them) and the adapted ones above, run separately."""

    decoder: torch.nn.Module
    """The base model's decoder stack: ``embed_tokens``, ``layers``, ``norm``, ``rotary_emb``."""
    lm_head: torch.nn.Module
    depth: int
    attention: str

    @classmethod
    def of(cls, model: torch.nn.Module) -> Trunk | None:
        """The trunk of a LoRA-wrapped model, or None when no layer is frozen or the
        architecture is not one whose forward this module reproduces."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = base.config
        decoder = getattr(base, "model", None)
        if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES or decoder is None:
            return None
        if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
            return None
        attention = getattr(config, "_attn_implementation", None) or "eager"
        if attention not in SUPPORTED_ATTENTION:
            return None
        adapted = set()
        for name, param in model.named_parameters():
            if param.requires_grad:
                found = _LAYER_INDEX.search(name)
                if found is None:
                    return None  # something outside the decoder layers trains
                adapted.add(int(found.group(1)))
        depth = min(adapted, default=0)
        if depth == 0:
            return None
        return cls(decoder, base.lm_head, depth, attention)

    @property
    def num_layers(self) -> int:
        return len(self.decoder.layers)

    def _run(self, layers, hidden, mask, positions, cache) -> torch.Tensor:
        mask_4d = attention_mask_4d(mask, hidden.shape[1], self.attention, hidden.dtype)
        position_embeddings = self.decoder.rotary_emb(hidden, position_ids=positions)
        for layer in layers:
            out = layer(
                hidden,
                attention_mask=mask_4d,
                position_ids=positions,
                cache=cache,
                use_cache=cache is not None,
                position_embeddings=position_embeddings,
            )
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    @torch.no_grad()
    def lower(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache | None,
    ) -> torch.Tensor:
        """Hidden states entering the first adapted layer; the frozen layers' keys/values are
        appended to ``cache``. ``mask`` covers the cache's columns and then ``input_ids``."""
        hidden = self.decoder.embed_tokens(input_ids)
        return self._run(self.decoder.layers[: self.depth], hidden, mask, positions, cache)

    def upper(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache | None,
    ) -> torch.Tensor:
        """The adapted layers and the final norm over ``hidden`` (from :meth:`lower`)."""
        layers = self.decoder.layers[self.depth :]
        return self.decoder.norm(self._run(layers, hidden, mask, positions, cache))


MEMO_BUDGET = 2**27
"""Most bytes of hidden states a :class:`FrozenStateMemo` keeps (128 MB): several client
updates' worth of training rows for the embedded default (about 0.25 MB a row)."""


@dataclass
class _Prefix:
    hidden: torch.Tensor
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]]


class FrozenStateMemo:
    """Hidden states entering the first adapted layer, by token sequence.

    A training step scores rows of (prompt, completion); the same rows come back at every
    local step (the wins and losses are sampled from one pool), and their frozen layers would
    give the same states each time. Here they run once per row; every step then runs only the
    adapted layers. Oldest rows go first beyond ``budget`` bytes; :func:`forget_frozen_states`
    empties the memo when a new adapter arrives, so memory does not grow over rounds.
    """

    def __init__(self, trunk: Trunk, budget: int = MEMO_BUDGET) -> None:
        self.trunk, self.budget = trunk, budget
        self.prefixes: dict[tuple[int, ...], _Prefix] = {}
        self.entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.computed_rows = 0
        """Rows whose frozen layers have run (a test and the benchmarks read it)."""

    def clear(self) -> None:
        self.prefixes.clear()
        self.entries.clear()
        self.bytes = 0

    def _device(self) -> torch.device:
        return next(self.trunk.decoder.parameters()).device

    def prefix(self, ids: tuple[int, ...]) -> _Prefix:
        """The shared prefix's hidden states and frozen keys/values, run once."""
        if ids not in self.prefixes:
            cache = DynamicCache()
            tokens = torch.tensor([list(ids)], device=self._device())
            positions = torch.arange(len(ids), device=tokens.device).unsqueeze(0)
            hidden = self.trunk.lower(tokens, torch.ones_like(tokens), positions, cache)
            kv = {i: layer_kv(cache, i) for i in range(self.trunk.depth)}
            self.prefixes[ids] = _Prefix(hidden, kv)
        return self.prefixes[ids]

    def rows(self, prefix: tuple[int, ...], rows: list[tuple[int, ...]]) -> list[torch.Tensor]:
        """Each row's hidden states ``[len(row), d]``, continuing ``prefix``."""
        wanted = list(dict.fromkeys(rows))
        for row in wanted:  # newest first out of eviction's way
            if (prefix, row) in self.entries:
                self.entries.move_to_end((prefix, row))
        missing = [r for r in wanted if (prefix, r) not in self.entries]
        if missing:
            self._compute(prefix, missing, keep=len(wanted))
        return [self.entries[(prefix, row)] for row in rows]

    def _compute(self, prefix: tuple[int, ...], rows: list[tuple[int, ...]], keep: int) -> None:
        device = self._device()
        p, width, b = len(prefix), max(len(r) for r in rows), len(rows)
        ids = torch.zeros((b, width), dtype=torch.long, device=device)
        mask = torch.zeros((b, width), dtype=torch.long, device=device)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, device=device)
            mask[i, width - len(row) :] = 1
        positions = p + (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        if p:
            for index, (k, v) in self.prefix(prefix).kv.items():
                cache.update(k.repeat_interleave(b, 0), v.repeat_interleave(b, 0), index)
            mask = torch.cat([torch.ones((b, p), dtype=mask.dtype, device=device), mask], 1)
        hidden = self.trunk.lower(ids, mask, positions, cache)
        self.computed_rows += b
        for i, row in enumerate(rows):
            state = hidden[i, width - len(row) :].clone()
            self.entries[(prefix, row)] = state
            self.bytes += state.numel() * state.element_size()
        while self.bytes > self.budget and len(self.entries) > keep:
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()


_MEMOS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def frozen_memo(model: torch.nn.Module) -> FrozenStateMemo | None:
    """The model's memo (one per model), or None when it has no frozen trunk to run once."""
    if model not in _MEMOS:
        trunk = Trunk.of(model)
        _MEMOS[model] = FrozenStateMemo(trunk) if trunk is not None else None
    return _MEMOS[model]


def forget_frozen_states(model: torch.nn.Module) -> None:
    """Empty the model's memo (a new adapter arrived: a new client update starts)."""
    memo = _MEMOS.get(model)
    if memo is not None:
        memo.clear()
