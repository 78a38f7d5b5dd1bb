"""Log-probabilities of completion tokens, computing logits only where a loss is taken.

Sequences are left-padded so every completion ends at the last column; the model is then asked
for logits at the ``K`` positions that predict a completion token only (``logits_to_keep``),
``K`` being the longest completion. Prompt positions, most of a sequence, never reach the
vocabulary projection.

The prompt prefix every row shares (chat header, instructions, worked example) is run once per
batch instead of once per row: its KV cache, still attached to the autograd graph, is repeated
over the batch, and the rows continue from it laid out ``[prefix][pad…][rest]`` with the pads
masked and position ids counted over real tokens. Gradients are those of the plain layout.
A model that trains with gradient checkpointing drops any cache inside its checkpointed layers,
so there the prefix is written in front of every row instead, in the same layout.

A micro-batch is cut into forward passes (``forward_passes``) so that one pass's logits stay
under ``LOGITS_BUDGET``: the logits, not the model, dominate memory at a 151k vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from spearfl.algorithms.logits import target_logprobs
from spearfl.models.generation import common_prefix_length
from spearfl.models.trunk import FrozenStateMemo, frozen_memo

LOGITS_BUDGET = 2**28
"""Most logits (rows x longest completion x vocabulary) one forward pass holds when
``optim.micro_batch_size`` is unset: 268M, i.e. 1 GiB in float32, 512 MiB in bf16 (3 rows of
512 tokens at Qwen2.5's 151,936)."""


@dataclass
class TokenBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    """[B, K]: completion tokens right-aligned; column k predicts position W - K + k."""
    target_mask: torch.Tensor
    """[B, K]: 1 on completion tokens."""
    prefix_ids: torch.Tensor | None = None
    """[1, P]: the shared prefix, run once; ``input_ids`` then hold only what follows it."""


def shared_prefix(pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> int:
    """Tokens all prompts start with, leaving each row at least one prompt token of its own."""
    return common_prefix_length([p for p, _ in pairs]) if len(pairs) > 1 else 0


def build_batch(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_id: int,
    device: torch.device,
    share_prefix: bool = True,
) -> TokenBatch:
    """Left-pad ``prompt + completion`` sequences and align completion targets at the right."""
    n_prefix = shared_prefix(pairs) if share_prefix else 0
    prefix = list(pairs[0][0][:n_prefix])
    pairs = [(list(p)[n_prefix:], c) for p, c in pairs]
    width = max(len(p) + len(c) for p, c in pairs)
    k = max(1, max(len(c) for _, c in pairs))
    b = len(pairs)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    attn = torch.zeros((b, width), dtype=torch.long)
    targets = torch.zeros((b, k), dtype=torch.long)
    tmask = torch.zeros((b, k), dtype=torch.float32)
    for row, (prompt, completion) in enumerate(pairs):
        seq = list(prompt) + list(completion)
        ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        attn[row, width - len(seq) :] = 1
        if completion:
            targets[row, k - len(completion) :] = torch.tensor(list(completion), dtype=torch.long)
            tmask[row, k - len(completion) :] = 1.0
    positions = n_prefix + (attn.cumsum(-1) - 1).clamp(min=0)
    return TokenBatch(
        input_ids=ids.to(device),
        attention_mask=attn.to(device),
        position_ids=positions.to(device),
        targets=targets.to(device),
        target_mask=tmask.to(device),
        prefix_ids=torch.tensor([prefix], dtype=torch.long, device=device) if prefix else None,
    )


def align_flags(flags: Sequence[Sequence[bool]], k: int, device: torch.device) -> torch.Tensor:
    """Right-align per-completion-token flags to the ``[B, K]`` target layout."""
    out = torch.zeros((len(flags), k), dtype=torch.float32)
    for row, row_flags in enumerate(flags):
        if row_flags:
            out[row, k - len(row_flags) :] = torch.tensor([float(f) for f in row_flags])
    return out.to(device)


def drops_cache(model: torch.nn.Module) -> bool:
    """Whether a forward pass now runs checkpointed layers, which ignore a KV cache passed in
    (transformers turns caching off for them in training mode, with gradients on)."""
    if not (model.training and torch.is_grad_enabled()):
        return False
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def completion_logits(model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    """Logits ``[B, K, V]`` predicting each completion column (prompt positions skipped).

    With frozen layers below the adapted ones, each row's frozen states run once
    (:class:`~spearfl.models.trunk.FrozenStateMemo`) and only the adapted layers run here.
    """
    memo = frozen_memo(model)
    if memo is not None:
        return _adapted_layer_logits(model, memo, batch)
    ids, mask, positions = batch.input_ids, batch.attention_mask, batch.position_ids
    cache = None
    if batch.prefix_ids is not None:
        rows, n_prefix = ids.shape[0], batch.prefix_ids.shape[1]
        ones = torch.ones((rows, n_prefix), dtype=mask.dtype, device=mask.device)
        mask = torch.cat([ones, mask], dim=1)
        if drops_cache(model):
            prefix = batch.prefix_ids.expand(rows, -1)
            ids = torch.cat([prefix, ids], dim=1)
            start = torch.arange(n_prefix, device=positions.device).expand(rows, -1)
            positions = torch.cat([start, positions], dim=1)
        else:
            cache = model(input_ids=batch.prefix_ids, use_cache=True, logits_to_keep=1).cache
            cache.batch_repeat_interleave(rows)
    k, width = batch.targets.shape[1], ids.shape[1]
    if width <= k:
        raise ValueError("scoring needs at least one prompt token before every completion")
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        cache=cache,
        logits_to_keep=torch.arange(width - k - 1, width - 1, device=ids.device),
        use_cache=cache is not None,
    )
    return out.logits


def _adapted_layer_logits(
    model: torch.nn.Module, memo: FrozenStateMemo, batch: TokenBatch
) -> torch.Tensor:
    """:func:`completion_logits` from the rows' kept frozen states: the same layout, positions
    and prefix handling, through the adapted layers only."""
    trunk = memo.trunk
    mask, positions = batch.attention_mask, batch.position_ids
    rows, width = mask.shape
    k = batch.targets.shape[1]
    if width <= k:
        raise ValueError("scoring needs at least one prompt token before every completion")
    tokens = [tuple(row[m.bool()].tolist()) for row, m in zip(batch.input_ids.cpu(), mask.cpu())]
    prefix = () if batch.prefix_ids is None else tuple(batch.prefix_ids[0].tolist())
    states = memo.rows(prefix, tokens)
    hidden = states[0].new_zeros((rows, width, states[0].shape[-1]))
    for row, state in enumerate(states):
        hidden[row, width - state.shape[0] :] = state
    cache = None
    if prefix:
        n_prefix = len(prefix)
        mask = torch.cat(
            [torch.ones((rows, n_prefix), dtype=mask.dtype, device=mask.device), mask], 1
        )
        start = torch.arange(n_prefix, device=positions.device).unsqueeze(0)
        prefix_hidden = memo.prefix(prefix).hidden
        if drops_cache(model):
            hidden = torch.cat([prefix_hidden.expand(rows, -1, -1), hidden], dim=1)
            positions = torch.cat([start.expand(rows, -1), positions], dim=1)
        else:
            cache = DynamicCache()
            ones = torch.ones((1, n_prefix), dtype=mask.dtype, device=mask.device)
            trunk.upper(prefix_hidden, ones, start, cache)
            cache.batch_repeat_interleave(rows)
    out = trunk.upper(hidden, mask, positions, cache)
    return trunk.lm_head(out[:, -k - 1 : -1])


def vocab_size(model: torch.nn.Module) -> int:
    return int(model.config.vocab_size)


def forward_passes(
    completion_lengths: Sequence[int], rows_per_pass: int | None, vocab: int
) -> list[slice]:
    """Consecutive row ranges, one per forward pass (``optim.micro_batch_size``).

    ``rows_per_pass`` set: that many rows each. Unset: as many rows as keep
    ``rows x longest completion x vocab`` within ``LOGITS_BUDGET`` (at least one row).
    """
    n = len(completion_lengths)
    if rows_per_pass:
        return [slice(i, min(i + rows_per_pass, n)) for i in range(0, n, rows_per_pass)]
    passes, start, longest = [], 0, 1
    for i, length in enumerate(completion_lengths):
        widest = max(longest, length)
        if i > start and (i - start + 1) * widest * vocab > LOGITS_BUDGET:
            passes.append(slice(start, i))
            start, widest = i, max(1, length)
        longest = widest
    if n:
        passes.append(slice(start, n))
    return passes


def completion_logprobs(model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    """``log p(target)`` for every ``[B, K]`` column (zero-padded columns are meaningless)."""
    return target_logprobs(completion_logits(model, batch), batch.targets)
