"""Log-probabilities of completion tokens, computing logits only where a loss is taken.

Sequences are left-padded so every completion ends at the last column; the model is then asked
for logits over the last ``K + 1`` positions only (``logits_to_keep``), where ``K`` is the longest
completion. Prompt positions, most of a sequence, never reach the vocabulary projection.

The prompt prefix every row shares (chat header, instructions, worked example) is run once per
batch instead of once per row: its KV cache, still attached to the autograd graph, is repeated
over the batch, and the rows continue from it laid out ``[prefix][pad…][rest]`` with the pads
masked and position ids counted over real tokens. Gradients are those of the plain layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from spearfl.algorithms.losses import target_logprobs
from spearfl.models.generation import common_prefix_length


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

    @property
    def keep(self) -> int:
        return self.targets.shape[1] + 1


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


def completion_logits(model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    """Logits ``[B, K, V]`` predicting each completion column (prompt positions skipped)."""
    cache = None
    mask = batch.attention_mask
    if batch.prefix_ids is not None:
        cache = model(input_ids=batch.prefix_ids, use_cache=True, logits_to_keep=1).cache
        rows = batch.input_ids.shape[0]
        cache.batch_repeat_interleave(rows)
        ones = torch.ones((rows, batch.prefix_ids.shape[1]), dtype=mask.dtype, device=mask.device)
        mask = torch.cat([ones, mask], dim=1)
    out = model(
        input_ids=batch.input_ids,
        attention_mask=mask,
        position_ids=batch.position_ids,
        cache=cache,
        logits_to_keep=batch.keep,
        use_cache=cache is not None,
    )
    return out.logits[:, :-1, :]


def completion_logprobs(model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    """``log p(target)`` for every ``[B, K]`` column (zero-padded columns are meaningless)."""
    return target_logprobs(completion_logits(model, batch), batch.targets)
