"""Option log-likelihood: the sum of log-probabilities of each option's tokens after a prompt.

The prompt runs once (its prefill); every option continues from a copy of its cache, so the
prompt itself is never re-run. The first option token is scored from the prefill's own
next-token logits, the others from one batched pass over all options.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from spearfl.models.generation import PrefillState

Options = Sequence[Sequence[Sequence[int]]]
"""Per question, each option's token ids."""


@dataclass
class OptionBatch:
    """Every option of a batch of questions as one row, continuing its question's prompt."""

    ids: torch.Tensor
    """[questions x per_question, width]: option tokens, right-padded."""
    attention_mask: torch.Tensor
    """The prompt's columns, then the option's own."""
    positions: torch.Tensor
    per_question: int


def option_batch(
    prompt_mask: torch.Tensor, next_position: torch.Tensor, options: Options, pad_id: int
) -> OptionBatch:
    """Lay out ``options`` as rows after prompts with attention mask ``prompt_mask`` whose next
    token sits at ``next_position`` (a question with fewer options than the most gets padding
    rows, never scored)."""
    device = prompt_mask.device
    n_opt = max(len(o) for o in options)
    flat = [opts[j] if j < len(opts) else [pad_id] for opts in options for j in range(n_opt)]
    width = max(len(o) for o in flat)
    ids = torch.full((len(flat), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(flat), width), dtype=torch.long)
    for row, toks in enumerate(flat):
        ids[row, : len(toks)] = torch.tensor(list(toks))
        mask[row, : len(toks)] = 1
    ids, mask = ids.to(device), mask.to(device)
    attn = torch.cat([prompt_mask.repeat_interleave(n_opt, 0), mask], dim=1)
    start = next_position.repeat_interleave(n_opt).unsqueeze(1)
    positions = start + torch.arange(width, device=device).unsqueeze(0)
    return OptionBatch(ids, attn, positions, n_opt)


def option_scores(
    first_logits: torch.Tensor, logits: torch.Tensor, options: Options, n_opt: int
) -> list[list[float]]:
    """Per question, each option's summed log-probability: its first token from the prompt's
    next-token ``first_logits`` [questions, V], the rest from ``logits`` [rows, width, V]."""
    first = torch.log_softmax(first_logits.float(), -1).repeat_interleave(n_opt, 0)
    logp = torch.log_softmax(logits.float(), -1)
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


@torch.no_grad()
def option_loglik(model, state: PrefillState, options: Options, pad_id: int) -> list[list[float]]:
    """Option scores with the whole model: the prompt's cache copied once per option."""
    batch = option_batch(state.attention_mask, state.next_position, options, pad_id)
    cache = copy.deepcopy(state.cache)
    cache.batch_repeat_interleave(batch.per_question)
    out = model(
        input_ids=batch.ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.positions,
        cache=cache,
        use_cache=False,
    )
    return option_scores(state.logits, out.logits, options, batch.per_question)
