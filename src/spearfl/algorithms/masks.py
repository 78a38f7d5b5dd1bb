"""Which completion tokens of a wrong answer the unlikelihood term may push down (SPEC §3).

Whole wrong answers share most tokens with right ones (reasoning, format, the answer marker), so
SPEAR penalises only the answer region: the last N tokens, or the tokens of the extracted answer,
and never the answer marker or (for maths) operators and LaTeX structure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

_MARKER = re.compile(r"answer\s*[:：]", re.IGNORECASE)
_MATH_TOKEN = re.compile(r"^(?:[\s+\-*/=<>^_()\[\]{}|\\.,:;!%$&~']+|\s*\\[A-Za-z]+\s*)$")


@dataclass(frozen=True)
class MaskOptions:
    tail_tokens: int = 0
    answer_only: bool = False
    skip_math_ops: bool = False
    protect_marker: bool = False


def token_char_spans(
    tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]
) -> list[tuple[int, int]]:
    """Character span of each token in ``tokenizer.decode(ids)``, by decoding growing prefixes."""
    spans = []
    previous = 0
    for k in range(1, len(ids) + 1):
        end = len(tokenizer.decode(list(ids[:k]), skip_special_tokens=True))
        spans.append((previous, max(previous, end)))
        previous = max(previous, end)
    return spans


def _overlaps(span: tuple[int, int], region: tuple[int, int]) -> bool:
    return span[0] < region[1] and region[0] < span[1] and span[1] > span[0]


def unlikelihood_mask(
    ids: Sequence[int],
    text: str,
    spans: list[tuple[int, int]],
    answer_span: tuple[int, int] | None,
    options: MaskOptions,
) -> list[bool]:
    """One flag per completion token (EOS is never part of ``ids``)."""
    n = len(ids)
    if n == 0:
        return []
    tail = [i >= n - options.tail_tokens for i in range(n)] if options.tail_tokens > 0 else None
    if options.answer_only and answer_span is not None:
        mask = [_overlaps(span, answer_span) for span in spans]
        if not any(mask):
            mask = tail or [True] * n
    else:
        mask = tail or [True] * n
    if options.protect_marker:
        for match in _MARKER.finditer(text):
            region = match.span()
            mask = [m and not _overlaps(s, region) for m, s in zip(mask, spans)]
    if options.skip_math_ops:
        pieces = [text[a:b] for a, b in spans]
        mask = [m and not (p.strip() and _MATH_TOKEN.match(p)) for m, p in zip(mask, pieces)]
    return mask
