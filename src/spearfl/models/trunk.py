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
