"""The evaluation prompts' frozen-layer states, computed at the first evaluation and kept.

The held-out questions and their options are the same tokens at every evaluation, and the
layers below the first LoRA layer never change (:mod:`spearfl.models.trunk`). So the first
evaluation runs those layers once over every prompt and option and keeps, per batch, the
hidden states entering the first adapted layer and the frozen layers' keys/values; every
evaluation then runs only the adapted layers (8 of the embedded model's 30) over them, and the
greedy decoding continues from the full cache as before. The kept states cost
``FROZEN_STATES_BUDGET`` at most; a larger evaluation set runs the whole model instead.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from spearfl.evaluation.options import OptionBatch, Options, option_batch, option_scores
from spearfl.models.generation import PrefillState, common_prefix_length, left_pad
from spearfl.models.trunk import Trunk, cache_with, layer_kv

FROZEN_STATES_BUDGET = 2**30
"""Most bytes the kept states may take (1 GiB); the embedded default's 240 questions with
four options each take about 0.3 GB."""


@dataclass
class _Batch:
    mask: torch.Tensor
    """[b, prefix + suffix]: the prompts' attention mask, shared prefix included."""
    positions: torch.Tensor
    """[b, suffix]: position ids of the suffix tokens."""
    hidden: torch.Tensor
    """[b, suffix, d]: the suffix's hidden states entering the first adapted layer."""
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    """Per frozen layer, the suffix's keys and values."""
    options: OptionBatch | None
    option_hidden: torch.Tensor | None


def frozen_states_bytes(trunk: Trunk, prompt_tokens: int, option_tokens: int) -> int:
    """Bytes kept for ``prompt_tokens`` suffix tokens and ``option_tokens`` option tokens."""
    config = trunk.decoder.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    width = next(trunk.decoder.parameters()).element_size()
    per_prompt_token = 2 * trunk.depth * heads * head_dim + config.hidden_size
    return width * (prompt_tokens * per_prompt_token + option_tokens * config.hidden_size)


class FrozenPromptStates:
    """Frozen-layer states of fixed batches of prompts (and options), and the adapted layers'
    prefill from them: :meth:`prefill` gives what :class:`~spearfl.models.generation.PrefixRunner`
    would, at a fraction of the cost."""

    def __init__(
        self,
        trunk: Trunk,
        prompts: Sequence[Sequence[int]],
        batches: Sequence[Sequence[int]],
        pad_id: int,
        options: Options | None = None,
    ) -> None:
        self.trunk, self.pad_id = trunk, pad_id
        self.device = next(trunk.decoder.parameters()).device
        self.prefix_len = p = common_prefix_length(prompts)
        self.prefix_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.prefix_hidden = None
        if p:
            cache = DynamicCache()
            ids = torch.tensor([list(prompts[0][:p])], device=self.device)
            self.prefix_hidden = trunk.lower(ids, torch.ones_like(ids), self._arange(p), cache)
            self.prefix_kv = {i: layer_kv(cache, i) for i in range(trunk.depth)}
        self.batches = [
            self._batch(
                [prompts[i] for i in rows], None if options is None else [options[i] for i in rows]
            )
            for rows in batches
        ]
        self._prefix_cache: DynamicCache | None = None

    def _arange(self, n: int) -> torch.Tensor:
        return torch.arange(n, device=self.device).unsqueeze(0)

    def _repeated_prefix(self, rows: int) -> DynamicCache:
        return cache_with(
            {
                i: (k.repeat_interleave(rows, 0), v.repeat_interleave(rows, 0))
                for i, (k, v) in self.prefix_kv.items()
            }
        )

    def _batch(self, prompts: Sequence[Sequence[int]], options: Options | None) -> _Batch:
        p = self.prefix_len
        ids, mask = left_pad([list(q[p:]) for q in prompts], self.pad_id, self.device)
        b = ids.shape[0]
        positions = p + (mask.cumsum(-1) - 1).clamp(min=0)
        if p:
            mask = torch.cat([torch.ones((b, p), dtype=mask.dtype, device=self.device), mask], 1)
        cache = self._repeated_prefix(b)
        hidden = self.trunk.lower(ids, mask, positions, cache)
        kv = [
            (k[:, :, p:].clone(), v[:, :, p:].clone())
            for k, v in (layer_kv(cache, i) for i in range(self.trunk.depth))
        ]
        batch, option_hidden = None, None
        if options is not None:
            batch = option_batch(mask, positions[:, -1] + 1, options, self.pad_id)
            cache.batch_repeat_interleave(batch.per_question)
            option_hidden = self.trunk.lower(
                batch.ids, batch.attention_mask, batch.positions, cache
            )
        return _Batch(mask, positions, hidden, kv, batch, option_hidden)

    def start(self) -> None:
        """Run the adapted layers over the shared prefix: once per evaluation, as the adapter
        may have changed since the last one."""
        self._prefix_cache = None
        if self.prefix_len:
            cache = cache_with(self.prefix_kv)
            ones = torch.ones((1, self.prefix_len), dtype=torch.long, device=self.device)
            self.trunk.upper(self.prefix_hidden, ones, self._arange(self.prefix_len), cache)
            self._prefix_cache = cache

    def prefill(self, index: int) -> PrefillState:
        """Batch ``index``'s prefill under the current adapter (after :meth:`start`)."""
        batch = self.batches[index]
        rows = batch.hidden.shape[0]
        if self._prefix_cache is not None:
            cache = copy.deepcopy(self._prefix_cache)
            cache.batch_repeat_interleave(rows)
        else:
            cache = DynamicCache()
        for i, (k, v) in enumerate(batch.kv):
            cache.update(k, v, i)
        hidden = self.trunk.upper(batch.hidden, batch.mask, batch.positions, cache)
        logits = self.trunk.lm_head(hidden[:, -1])
        return PrefillState(cache, batch.mask, batch.positions[:, -1] + 1, logits)

    def option_scores(self, index: int, state: PrefillState, options: Options) -> list[list[float]]:
        """Each option's log-likelihood after batch ``index``'s prompts (``state`` from
        :meth:`prefill`): only the adapted layers run over the options."""
        batch = self.batches[index]
        n = batch.options.per_question
        upper = {
            i: tuple(t.repeat_interleave(n, 0) for t in layer_kv(state.cache, i))
            for i in range(self.trunk.depth, self.trunk.num_layers)
        }
        hidden = self.trunk.upper(
            batch.option_hidden,
            batch.options.attention_mask,
            batch.options.positions,
            cache_with(upper),
        )
        return option_scores(state.logits, self.trunk.lm_head(hidden), options, n)
