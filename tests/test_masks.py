"""Token spans and unlikelihood masks on the paper's real tokenizers (Qwen2.5 and Llama-3) and
the embedded model's, with accents, CJK, emoji and LaTeX."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from spearfl.algorithms.masks import MaskOptions, token_char_spans, unlikelihood_mask

TEXTS = [
    "Café déjà vu, naïve résumé.\nAnswer: no",
    "東京は日本の首都です。答えは是。\nAnswer: yes",
    "Party 🎉🇫🇷 👩‍👩‍👧 ok\nAnswer: yes",
    r"We get $\frac{x^2+1}{\sqrt{2}} \leq \alpha_i$ so Answer: (B)",
]


@pytest.fixture(scope="module")
def embedded_tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _check_spans(tokenizer, ids: list[int]) -> list[str]:
    """The spans tile the decoded text, and each ends where the text of its prefix ends, not
    counting a character the prefix has only begun (the quadratic definition, as a reference)."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    spans = token_char_spans(tokenizer, ids)
    assert len(spans) == len(ids)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    decoded = [tokenizer.decode(ids[: k + 1], skip_special_tokens=True) for k in range(len(ids))]
    ends = [len(d.removesuffix("\ufffd")) for d in decoded]
    assert [end for _, end in spans] == ends
    return [text[a:b] for a, b in spans]


@pytest.mark.parametrize("text", TEXTS)
def test_spans_on_the_paper_tokenizers(paper_tokenizer, text):
    pieces = _check_spans(paper_tokenizer, _ids(paper_tokenizer, text))
    assert "".join(pieces) == text


@pytest.mark.parametrize("text", TEXTS)
def test_spans_on_the_embedded_tokenizer(embedded_tokenizer, text):
    assert "".join(_check_spans(embedded_tokenizer, _ids(embedded_tokenizer, text))) == text


def test_a_character_split_across_tokens_belongs_to_the_token_completing_it(embedded_tokenizer):
    # SmolLM2's vocabulary writes 東 as two tokens: the first holds only its leading bytes.
    ids = _ids(embedded_tokenizer, "東")
    assert len(ids) == 2
    assert token_char_spans(embedded_tokenizer, ids) == [(0, 0), (0, 1)]


def test_special_tokens_are_empty_spans(paper_tokenizer):
    eos = paper_tokenizer.eos_token_id
    ids = [*_ids(paper_tokenizer, "naïve"), eos, *_ids(paper_tokenizer, " 😀")]
    pieces = _check_spans(paper_tokenizer, ids)
    assert pieces[len(ids) - len(_ids(paper_tokenizer, " 😀")) - 1] == ""
    assert "".join(pieces) == "naïve 😀"


def _masked(tokenizer, text: str, options: MaskOptions, answer: str | None = None) -> list[str]:
    ids = _ids(tokenizer, text)
    spans = token_char_spans(tokenizer, ids)
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    where = None
    if answer is not None:
        start = decoded.rindex(answer)
        where = (start, start + len(answer))
    flags = unlikelihood_mask(ids, decoded, spans, where, options)
    return [decoded[a:b] for (a, b), flag in zip(spans, flags) if flag]


def test_answer_only_mask_is_the_cjk_answer(paper_tokenizer):
    text = "Déjà vu: 東京タワー 🎉 is tall.\nAnswer: 是"
    options = MaskOptions(answer_only=True, protect_marker=True)
    assert _masked(paper_tokenizer, text, options, answer="是") == [" 是"]


def test_tail_mask_never_touches_the_marker(paper_tokenizer):
    text = "naïve café 😀\nAnswer: résumé"
    options = MaskOptions(tail_tokens=6, protect_marker=True)
    assert _masked(paper_tokenizer, text, options) == ["\n", " ré", "sum", "é"]
    # without the protection the marker's two tokens are in the tail too
    assert _masked(paper_tokenizer, text, MaskOptions(tail_tokens=6)) == [
        "\n",
        "Answer",
        ":",
        " ré",
        "sum",
        "é",
    ]


def test_math_mask_keeps_latex_commands_split_into_tokens(paper_tokenizer):
    # Both tokenizers write \frac as " $\" + "frac" and \leq as " \" + "le" + "q": all structure.
    text = r"So $\frac{x^2+1}{\sqrt{2}} \leq \alpha_i$ à 🎉"
    got = _masked(paper_tokenizer, text, MaskOptions(skip_math_ops=True))
    assert got == ["So", "{x", "2", "1", "2", "_i", " à", " ", "", "🎉"]
