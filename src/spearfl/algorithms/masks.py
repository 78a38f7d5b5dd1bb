"""Which completion tokens of a wrong answer the unlikelihood term may push down (SPEC §3).

Whole wrong answers share most tokens with right ones (reasoning, format, the answer marker), so
SPEAR penalises only the answer region: the last N tokens, or the tokens of the extracted answer,
and never the answer marker or (for maths) operators and LaTeX structure.

Spans come from the tokenizer's own byte pieces in one pass (:func:`token_char_spans`); a token
that ends inside a multi-byte character (half an emoji or CJK character) has an empty span, so
only the token that completes the character can be penalised: the leading bytes are shared by
many characters, like the marker is shared by right and wrong answers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

_MARKER = re.compile(r"answer\s*[:：]", re.IGNORECASE)
_MATH_CHARS = frozenset("+-*/=<>^_()[]{}|\\.,:;!%$&~'")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")


@dataclass(frozen=True)
class MaskOptions:
    tail_tokens: int = 0
    answer_only: bool = False
    skip_math_ops: bool = False
    protect_marker: bool = False


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte value."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


_BYTE_OF = {c: b for b, c in _bytes_to_unicode().items()}


def _token_bytes(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[bytes] | None:
    """The raw bytes each token stands for in a byte-level BPE vocabulary (Qwen2, Llama-3,
    SmolLM2); special tokens count as empty (they are skipped in the text). None when the
    vocabulary is not byte-level."""
    special = set(getattr(tokenizer, "all_special_ids", ()))
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    if convert is None:
        return None
    pieces = []
    for token_id, token in zip(ids, convert(list(ids))):
        if token_id in special or token is None:
            pieces.append(b"")
        elif token_id in added:
            pieces.append(str(added[token_id].content).encode())
        else:
            try:
                pieces.append(bytes(_BYTE_OF[c] for c in token))
            except KeyError:
                return None
    return pieces


def _byte_level_spans(
    tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], text: str
) -> list[tuple[int, int]] | None:
    """Spans from each token's bytes, in one pass; None unless they decode to exactly ``text``.

    A character belongs to the token holding its last byte: a token that ends inside a
    multi-byte character (a split emoji or CJK character) gets an empty span where it stands,
    and the token that completes the character gets the whole character.
    """
    pieces = _token_bytes(tokenizer, ids)
    if pieces is None or "\ufffd" in text or b"".join(pieces).decode("utf-8", "replace") != text:
        return None
    # Byte offset just past each character's last byte.
    char_ends, offset = [], 0
    for char in text:
        offset += len(char.encode())
        char_ends.append(offset)
    spans, char, byte_end = [], 0, 0
    for piece in pieces:
        byte_end += len(piece)
        start = char
        while char < len(char_ends) and char_ends[char] <= byte_end:
            char += 1
        spans.append((start, char))
    return spans


def _incremental_spans(
    tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], text: str
) -> list[tuple[int, int]] | None:
    """Spans by decoding each token with a short window of the tokens before it (what a
    streaming detokeniser does), so that leading-space rules see their context; a token whose
    text ends in an incomplete character waits for the next. None unless the pieces rebuild
    ``text``."""
    spans, pieces = [], []
    position, start, read = 0, 0, 0  # decode ids[start:] for context; ids[start:read] is out
    for k in range(len(ids)):
        before = tokenizer.decode(list(ids[start:read]), skip_special_tokens=True)
        after = tokenizer.decode(list(ids[start : k + 1]), skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            piece = after[len(before) :]
            pieces.append(piece)
            spans.append((position, position + len(piece)))
            position += len(piece)
            start, read = read, k + 1
        else:
            spans.append((position, position))
    return spans if "".join(pieces) == text else None


def _prefix_spans(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[tuple[int, int]]:
    """Spans by decoding growing prefixes: quadratic, the last resort."""
    spans, previous = [], 0
    for k in range(1, len(ids) + 1):
        end = len(tokenizer.decode(list(ids[:k]), skip_special_tokens=True))
        spans.append((previous, max(previous, end)))
        previous = max(previous, end)
    return spans


def token_char_spans(
    tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]
) -> list[tuple[int, int]]:
    """Character span ``[start, end)`` of each token in ``tokenizer.decode(ids,
    skip_special_tokens=True)``; the spans are contiguous and together cover the text.

    Byte-level vocabularies are mapped in linear time from each token's bytes: a character is
    the span of the token holding its last byte (a token ending inside a multi-byte character
    has an empty span). Other tokenizers decode each token in a short window of context
    (linear as well); only if that cannot rebuild the text are growing prefixes decoded.
    Special tokens are empty spans.
    """
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    spans = _byte_level_spans(tokenizer, ids, text)
    if spans is None:
        spans = _incremental_spans(tokenizer, ids, text)
    if spans is None:
        spans = _prefix_spans(tokenizer, ids)
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
        structure = _math_structure(text)
        mask = [m and not _all_structure(s, text, structure) for m, s in zip(mask, spans)]
    return mask


def _math_structure(text: str) -> list[bool]:
    """Per character: an operator, bracket or punctuation mark, or part of a LaTeX command.

    Judged on the text, not on token pieces, so that a command split into tokens (``\\`` +
    ``frac``, as Qwen2.5's and Llama-3's tokenizers write it) is still structure."""
    flags = [c in _MATH_CHARS for c in text]
    for match in _LATEX_COMMAND.finditer(text):
        flags[match.start() : match.end()] = [True] * (match.end() - match.start())
    return flags


def _all_structure(span: tuple[int, int], text: str, structure: list[bool]) -> bool:
    """A token whose visible characters are all mathematical structure (never a blank one)."""
    visible = [i for i in range(*span) if not text[i].isspace()]
    return bool(visible) and all(structure[i] for i in visible)
