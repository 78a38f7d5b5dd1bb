"""The trainable policy a process holds: base model + LoRA adapter, prompts in, tokens out.

One per process: the base model is loaded once and reused by every round and every client that
process serves; only adapter tensors are swapped in and out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from spearfl.config import Config
from spearfl.hub import hub_caches
from spearfl.models.adapter import attach_lora, get_adapter_state, set_adapter_state
from spearfl.models.generation import Completion, generate
from spearfl.models.loading import load_base_model
from spearfl.models.prompts import PromptFormatter
from spearfl.tasks.base import Message


@dataclass
class Policy:
    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    formatter: PromptFormatter
    device: torch.device
    max_seq_len: int

    @classmethod
    def from_config(cls, cfg: Config) -> Policy:
        m = cfg.model
        loaded = load_base_model(
            m.model_name,
            tokenizer_name=m.tokenizer_name,
            dtype=m.dtype,
            device=m.device,
            trust_remote_code=m.trust_remote_code,
            chat_template=m.chat_template,
            gradient_checkpointing=m.gradient_checkpointing,
            load_in_4bit=m.load_in_4bit,
            device_map=m.device_map,
            cache_dir=hub_caches(cfg.hf).models,
            offline=cfg.hf.offline,
        )
        lora = cfg.lora
        peft_model = attach_lora(
            loaded.model,
            r=lora.r,
            alpha=lora.alpha,
            dropout=lora.dropout,
            bias=lora.bias,
            target_modules=lora.target_modules,
            last_n_layers=lora.last_n_layers,
            seed=cfg.data.seed,
        )
        peft_model.eval()  # dropout only inside a client's training steps
        return cls(
            model=peft_model,
            tokenizer=loaded.tokenizer,
            formatter=PromptFormatter(loaded.tokenizer, loaded.use_chat_template),
            device=loaded.device,
            max_seq_len=m.max_seq_len,
        )

    @property
    def prompt_format(self) -> str:
        """``"chat template"`` or ``"plain (base model)"``: how ``encode`` writes prompts."""
        return self.formatter.name

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    def encode(self, messages: list[Message], assistant_prefix: str = "") -> list[int]:
        ids = self.formatter.encode(self.formatter.render(messages, assistant_prefix))
        # Keep the end of an over-long prompt: the question and the answer slot are there.
        return ids[-self.max_seq_len :]

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        do_sample: bool,
        temperature: float = 1.0,
        top_p: float = 1.0,
        batch_size: int = 16,
    ) -> list[Completion]:
        room = max(1, min(max_new_tokens, self.max_seq_len - max(len(p) for p in prompts)))
        return generate(
            self.model,
            self.tokenizer,
            prompts,
            max_new_tokens=room,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            batch_size=batch_size,
        )

    def get_adapter(self) -> dict[str, torch.Tensor]:
        return get_adapter_state(self.model)

    def set_adapter(self, state: dict[str, torch.Tensor]) -> None:
        set_adapter_state(self.model, state)

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}
