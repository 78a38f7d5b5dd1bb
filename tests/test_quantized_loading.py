"""4-bit loading: refused with a clear message without CUDA; the k-bit preparation it runs on a
GPU (peft's ``prepare_model_for_kbit_training``) freezes the base and upcasts it to float32."""

from __future__ import annotations

import pytest
import torch

from spearfl.models.loading import load_base_model, prepare_for_training


def test_4bit_without_cuda_is_refused_before_loading(tiny_model_dir):
    with pytest.raises(ValueError, match=r"model.load_in_4bit needs a CUDA GPU .* on cpu"):
        load_base_model(str(tiny_model_dir), load_in_4bit=True, device="cpu")


def test_kbit_preparation_freezes_and_upcasts_half_precision_weights(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    prepare_for_training(model, quantized=True, checkpointing=True)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert not any(p.requires_grad for p in model.parameters())
