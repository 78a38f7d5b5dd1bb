"""SPEAR's loss terms and unlikelihood masks, checked against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from spearfl.algorithms.losses import anchor_loss, mle_loss, unlikelihood_loss
from spearfl.algorithms.masks import MaskOptions, token_char_spans, unlikelihood_mask


def _logp(*probs: float) -> torch.Tensor:
    """A [1, T] tensor of log-probabilities."""
    return torch.log(torch.tensor([list(probs)], dtype=torch.float32))


# ------------------------------------------------------------------------ mle_loss
def test_mle_loss_is_mean_nll_over_masked_tokens():
    logp = _logp(0.5, 0.25, 0.1)
    got = mle_loss(logp, torch.tensor([[1, 1, 0]]))
    # (-log 0.5 - log 0.25) / 2 = (log 2 + 2 log 2) / 2
    assert float(got) == pytest.approx(1.5 * math.log(2.0), rel=1e-6)


def test_mle_loss_averages_over_all_rows_of_the_batch():
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.25, 1.0]]))
    mask = torch.tensor([[0, 1], [1, 1]])
    # masked tokens: 0.5, 0.25, 1.0 -> (log 2 + log 4 + 0) / 3 = log 2
    assert float(mle_loss(logp, mask)) == pytest.approx(math.log(2.0), rel=1e-6)


def test_mle_loss_all_masked_is_zero():
    assert float(mle_loss(_logp(0.5, 0.5), torch.zeros((1, 2)))) == 0.0


def test_mle_loss_pieces_with_the_whole_count_add_up_to_the_whole():
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.25, 1.0], [0.125, 0.5]]))
    mask = torch.tensor([[0, 1], [1, 1], [1, 0]])
    whole = mle_loss(logp, mask)
    # masked: 0.5, 0.25, 1.0, 0.125 -> (1 + 2 + 0 + 3) log 2 / 4
    assert float(whole) == pytest.approx(1.5 * math.log(2.0), rel=1e-6)
    pieces = mle_loss(logp[:1], mask[:1], 4) + mle_loss(logp[1:], mask[1:], 4)
    assert float(pieces) == pytest.approx(float(whole), rel=1e-6)
    # without the whole count each piece is its own mean: (log 2)/1 + (2+0+3) log 2 / 3
    apart = mle_loss(logp[:1], mask[:1]) + mle_loss(logp[1:], mask[1:])
    assert float(apart) == pytest.approx((1 + 5 / 3) * math.log(2.0), rel=1e-6)


# ------------------------------------------------------------------ unlikelihood
def test_unlikelihood_counts_only_masked_tokens_above_margin():
    # 0.9: masked in, above margin -> counts; 0.2: below margin; 0.5: masked out.
    logp = _logp(0.9, 0.2, 0.5)
    mask = torch.tensor([[1, 1, 0]])
    got = unlikelihood_loss(logp, mask, torch.tensor([1.0]), margin=0.3)
    expected = -math.log(1.0 - 0.9) / 2  # divided by the 2 masked positions
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_unlikelihood_is_scaled_by_mean_confidence():
    logp = _logp(0.9, 0.2, 0.5)
    mask = torch.tensor([[1, 1, 0]])
    got = unlikelihood_loss(logp, mask, torch.tensor([0.5, 1.0]), margin=0.3)
    expected = -math.log(0.1) / 2 * 0.75
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_unlikelihood_batch_normalises_by_all_masked_positions():
    logp = torch.log(torch.tensor([[0.9, 0.6], [0.5, 0.1]]))
    mask = torch.tensor([[1, 0], [1, 1]])
    # active: 0.9 (row 0) and 0.5 (row 1); 0.6 masked out; 0.1 below margin; 3 masked positions
    expected = (-math.log(0.1) - math.log(0.5)) / 3 * 0.5
    got = unlikelihood_loss(logp, mask, torch.tensor([0.5, 0.5]), margin=0.3)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_unlikelihood_pieces_with_the_whole_count_add_up_to_the_whole():
    logp = torch.log(torch.tensor([[0.9, 0.6], [0.5, 0.1]]))
    mask = torch.tensor([[1, 0], [1, 1]])
    conf = torch.tensor([0.5, 1.0])
    whole = unlikelihood_loss(logp, mask, conf, margin=0.3)
    # active 0.9 and 0.5 over 3 masked positions, times mean confidence 0.75
    assert float(whole) == pytest.approx((-math.log(0.1) - math.log(0.5)) / 3 * 0.75, rel=1e-5)
    pieces = unlikelihood_loss(logp[:1], mask[:1], conf, 0.3, 3) + unlikelihood_loss(
        logp[1:], mask[1:], conf, 0.3, 3
    )
    assert float(pieces) == pytest.approx(float(whole), rel=1e-6)


def test_unlikelihood_margin_is_strict_and_moves_the_threshold():
    logp = _logp(0.9, 0.6)
    mask = torch.ones((1, 2))
    conf = torch.tensor([1.0])
    low = unlikelihood_loss(logp, mask, conf, margin=0.5)
    high = unlikelihood_loss(logp, mask, conf, margin=0.7)
    assert float(low) == pytest.approx((-math.log(0.1) - math.log(0.4)) / 2, rel=1e-5)
    assert float(high) == pytest.approx(-math.log(0.1) / 2, rel=1e-5)
    # nothing above the margin -> 0 even though tokens are masked in
    none = unlikelihood_loss(logp, mask, conf, margin=0.95)
    assert float(none) == 0.0


def test_unlikelihood_all_masked_is_zero():
    got = unlikelihood_loss(_logp(0.9, 0.99), torch.zeros((1, 2)), torch.tensor([1.0]), 0.3)
    assert float(got) == 0.0


def test_unlikelihood_clamps_probability_one():
    # log p = 0 -> p = 1; -log(1 - p) would be inf without the clamp below 1.
    logp = torch.zeros((1, 1), requires_grad=True)
    got = unlikelihood_loss(logp, torch.ones((1, 1)), torch.tensor([1.0]), margin=0.3)
    value = float(got.detach())
    assert math.isfinite(value)
    # clamp at 1 - 1e-6: -log(1e-6) = 13.8155 (float32 rounding of 1 - 1e-6 moves it by < 1%)
    assert value == pytest.approx(-math.log(1e-6), rel=1e-2)
    got.backward()
    assert torch.isfinite(logp.grad).all()


def test_unlikelihood_gradient_pushes_probability_down():
    logp = torch.log(torch.tensor([[0.8]])).requires_grad_(True)
    loss = unlikelihood_loss(logp, torch.ones((1, 1)), torch.tensor([1.0]), margin=0.3)
    loss.backward()
    # d/dlogp [-log(1 - e^logp)] = p / (1 - p) = 4 > 0: descent lowers log p
    assert float(logp.grad) == pytest.approx(0.8 / 0.2, rel=1e-4)


# ------------------------------------------------------------------------ anchor
def test_anchor_loss_is_mean_squared_distance_over_all_elements():
    params = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.0]])}
    reference = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([[3.0]])}
    # (1 + 4 + 9) / 3 elements
    assert float(anchor_loss(params, reference)) == pytest.approx(14.0 / 3.0)


def test_anchor_loss_zero_at_reference_and_for_no_params():
    params = {"a": torch.tensor([1.5, -2.0])}
    assert float(anchor_loss(params, {"a": torch.tensor([1.5, -2.0])})) == 0.0
    assert float(anchor_loss({}, {})) == 0.0


# ------------------------------------------------------------------------- masks
def _spans(pieces: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Text and character span of each token piece, laid end to end."""
    spans, pos = [], 0
    for piece in pieces:
        spans.append((pos, pos + len(piece)))
        pos += len(piece)
    return "".join(pieces), spans


def _mask(pieces, options, answer_span=None):
    text, spans = _spans(pieces)
    ids = list(range(10, 10 + len(pieces)))
    return unlikelihood_mask(ids, text, spans, answer_span, options)


def test_mask_default_is_every_completion_token():
    assert _mask(["I", " pick", " dog"], MaskOptions()) == [True, True, True]


def test_mask_has_one_flag_per_id_and_empty_for_empty():
    # EOS is never part of ids, so the flags align with ids one to one.
    assert unlikelihood_mask([], "", [], None, MaskOptions(tail_tokens=3)) == []
    assert len(_mask(["a", "b", "c", "d"], MaskOptions(tail_tokens=2))) == 4


def test_mask_tail_tokens_keeps_only_the_last_n():
    pieces = ["so", " the", " answer", " is", " dog"]
    assert _mask(pieces, MaskOptions(tail_tokens=2)) == [False, False, False, True, True]
    assert _mask(pieces, MaskOptions(tail_tokens=1)) == [False, False, False, False, True]
    # more tail tokens than the completion has: everything
    assert _mask(pieces, MaskOptions(tail_tokens=9)) == [True] * 5


def test_mask_answer_only_keeps_the_answer_tokens():
    pieces = ["I", " think", " it", "'s", " dog", "gy"]  # "I think it's doggy"
    text, _ = _spans(pieces)
    start = text.index("doggy")
    got = _mask(pieces, MaskOptions(answer_only=True), answer_span=(start, start + 5))
    assert got == [False, False, False, False, True, True]


def test_mask_answer_only_partial_overlap_counts():
    # answer "og" covers part of " dog": the token overlaps, so it is penalised
    pieces = ["a", " dog", " here"]
    got = _mask(pieces, MaskOptions(answer_only=True), answer_span=(3, 5))
    assert got == [False, True, False]


def test_mask_answer_only_touching_span_does_not_count():
    # tokens "ab" [0,2), "cde" [2,5), "f" [5,6); the answer [5,6) only touches "cde"
    got = _mask(["ab", "cde", "f"], MaskOptions(answer_only=True), answer_span=(5, 6))
    assert got == [False, False, True]


def test_mask_answer_only_falls_back_to_tail_without_answer():
    pieces = ["no", " idea", " at", " all"]
    opts = MaskOptions(answer_only=True, tail_tokens=2)
    assert _mask(pieces, opts, answer_span=None) == [False, False, True, True]
    # an answer span no token overlaps also falls back to the tail
    assert _mask(pieces, opts, answer_span=(40, 45)) == [False, False, True, True]
    # no tail configured: the whole completion
    assert _mask(pieces, MaskOptions(answer_only=True)) == [True] * 4


def test_mask_answer_only_ignores_zero_width_tokens():
    text = "dog"
    spans = [(0, 0), (0, 3), (3, 3)]  # e.g. special/empty pieces decode to nothing
    got = unlikelihood_mask([1, 2, 3], text, spans, (0, 3), MaskOptions(answer_only=True))
    assert got == [False, True, False]


@pytest.mark.parametrize(
    "pieces, expected",
    [
        (["so", " Answer", ":", " B"], [True, False, False, True]),
        (["so", " answer", " :", " B"], [True, False, False, True]),
        (["so", " ANSWER", ":", "B"], [True, False, False, True]),
        (["so", " Answer", "\uff1a", " B"], [True, False, False, True]),  # full-width colon
        (["the", " answer", " is", " B"], [True, True, True, True]),  # no colon: no marker
    ],
)
def test_mask_protect_marker_variants(pieces, expected):
    assert _mask(pieces, MaskOptions(protect_marker=True)) == expected


def test_mask_protect_marker_every_occurrence_and_with_tail():
    pieces = ["Answer", ":", " A", ".", " answer", ":", " C"]
    got = _mask(pieces, MaskOptions(protect_marker=True))
    assert got == [False, False, True, True, False, False, True]
    tail = _mask(pieces, MaskOptions(protect_marker=True, tail_tokens=3))
    assert tail == [False, False, False, False, False, False, True]


def test_mask_protect_marker_off_keeps_marker_tokens():
    assert _mask(["Answer", ":", " B"], MaskOptions()) == [True, True, True]


def test_mask_skip_math_ops():
    pieces = ["x", " =", " (", "2", "+", "3", ")", " \\frac", "{", "1", "}", "^", " $", " ten"]
    expected = [
        True,
        False,
        False,
        True,
        False,
        True,
        False,
        False,
        False,
        True,
        False,
        False,
        False,
        True,
    ]
    assert _mask(pieces, MaskOptions(skip_math_ops=True)) == expected
    assert _mask(pieces, MaskOptions()) == [True] * len(pieces)


def test_mask_skip_math_ops_and_marker_combine():
    pieces = ["Answer", ":", " 4", "+", "x"]
    opts = MaskOptions(skip_math_ops=True, protect_marker=True)
    assert _mask(pieces, opts) == [False, False, True, False, True]


def test_mask_options_never_add_tokens_beyond_the_answer():
    pieces = ["Answer", ":", " (", "B", ")"]
    opts = MaskOptions(answer_only=True, protect_marker=True, skip_math_ops=True)
    assert _mask(pieces, opts, answer_span=(9, 10)) == [False, False, False, True, False]


# ------------------------------------------------------------- token_char_spans
class _CharTokenizer:
    """Token id i decodes to VOCAB[i]; id 0 is a special token that decodes to nothing."""

    VOCAB = ["<eos>", "An", "swer", ":", " d", "og"]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.VOCAB[i] for i in ids if not (skip_special_tokens and i == 0))


def test_token_char_spans_of_a_tokenizer_without_byte_pieces():
    spans = token_char_spans(_CharTokenizer(), [1, 2, 3, 4, 5])
    assert spans == [(0, 2), (2, 6), (6, 7), (7, 9), (9, 11)]


def test_token_char_spans_special_token_is_zero_width():
    spans = token_char_spans(_CharTokenizer(), [4, 0, 5])
    assert spans == [(0, 2), (2, 2), (2, 4)]
