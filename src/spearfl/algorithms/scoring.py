"""Log-probabilities of completion tokens, computing logits only where a loss is taken.

Sequences are left-padded so every completion ends at the last column; the model is then asked
for logits over the last ``K + 1`` positions only (``logits_to_keep``), where ``K`` is the longest
completion. Prompt positions, most of a sequence, never reach the vocabulary projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from spearfl.algorithms.losses import target_logprobs


@dataclass
class TokenBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    """[B, K]: completion tokens right-aligned; column k predicts position W - K + k."""
    target_mask: torch.Tensor
    """[B, K]: 1 on completion tokens."""

    @property
    def keep(self) -> int:
        return self.targets.shape[1] + 1


def build_batch(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int, device: torch.device
) -> TokenBatch:
    """Left-pad ``prompt + completion`` sequences and align completion targets at the right."""
    width = max(len(p) + len(c) for p, c in pairs)
    k = max(1, max(len(c) for _, c in pairs))
    b = len(pairs)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    attn = torch.zeros((b, width), dtype=torch.long)
    targets = torch.zeros((b, k), dtype=torch.long)
    tmask = torch.zeros((b, k), dtype=torch.float32)
    for row, (prompt, completion) in enumerate(pairs):
        seq = list(prompt) + list(completion)
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        attn[row, width - len(seq):] = 1
        if completion:
            targets[row, k - len(completion):] = torch.tensor(list(completion), dtype=torch.long)
            tmask[row, k - len(completion):] = 1.0
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    return TokenBatch(
        input_ids=ids.to(device),
        attention_mask=attn.to(device),
        position_ids=positions.to(device),
        targets=targets.to(device),
        target_mask=tmask.to(device),
    )


def align_flags(flags: Sequence[Sequence[bool]], k: int, device: torch.device) -> torch.Tensor:
    """Right-align per-completion-token flags to the ``[B, K]`` target layout."""
    out = torch.zeros((len(flags), k), dtype=torch.float32)
    for row, row_flags in enumerate(flags):
        if row_flags:
            out[row, k - len(row_flags):] = torch.tensor([float(f) for f in row_flags])
    return out.to(device)


def completion_logits(model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    """Logits ``[B, K, V]`` predicting each completion column (prompt positions skipped)."""
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=batch.keep,
        use_cache=False,
    )
    return out.logits[:, :-1, :]


def completion_logprobs(model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    """``log p(target)`` for every ``[B, K]`` column (zero-padded columns are meaningless)."""
    return target_logprobs(completion_logits(model, batch), batch.targets)
