"""LoRA goes on every linear projection of the chosen decoder layers; ``lora.last_n_layers``
above the model's depth (the paper's 28 or 36 on 28-layer models) means all of them."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM

from conftest import tiny_paper_model_folder
from spearfl.config import LoraConfig
from spearfl.models.adapter import attach_lora


def lora_modules(family: str, last_n_layers: int | None, tmp_path_factory) -> dict[int, set[str]]:
    """{decoder layer: names of its modules that carry LoRA}, and checks nothing else does."""
    model = AutoModelForCausalLM.from_pretrained(tiny_paper_model_folder(family, tmp_path_factory))
    linear = {
        name
        for name, module in model.model.layers[0].named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    assert linear == {
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    }
    defaults = LoraConfig()
    peft_model = attach_lora(
        model,
        r=4,
        alpha=8,
        dropout=0.0,
        bias="none",
        target_modules=defaults.target_modules,
        last_n_layers=last_n_layers,
        seed=0,
    )
    layers = peft_model.base_model.model.model.layers
    found = {
        i: {name for name, m in layer.named_modules() if isinstance(m, LoraLayer)}
        for i, layer in enumerate(layers)
    }
    outside = [
        n for n, m in peft_model.named_modules() if isinstance(m, LoraLayer) and ".layers." not in n
    ]
    assert outside == []  # not the embeddings, not the head
    for names in found.values():
        assert names in (set(), linear)  # a chosen layer gets every linear projection
    return found


@pytest.mark.parametrize("family", ["qwen2", "llama3"])
def test_last_n_layers_above_the_depth_means_every_layer(family, tmp_path_factory):
    every = lora_modules(family, None, tmp_path_factory)
    assert all(every.values()) and len(every) == 2
    assert lora_modules(family, 28, tmp_path_factory) == every
    assert lora_modules(family, 36, tmp_path_factory) == every


def test_last_n_layers_counts_from_the_top(tmp_path_factory):
    found = lora_modules("qwen2", 1, tmp_path_factory)
    assert found[0] == set() and len(found[1]) == 7
