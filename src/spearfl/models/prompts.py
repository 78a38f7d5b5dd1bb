"""Turn a task's chat messages into model input: chat template for chat models, plain otherwise."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from spearfl.tasks.base import Message


@dataclass
class PromptFormatter:
    tokenizer: PreTrainedTokenizerBase
    use_chat_template: bool

    def render(self, messages: list[Message], assistant_prefix: str = "") -> str:
        if self.use_chat_template:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            return text + assistant_prefix
        # Base models: the conversation as plain paragraphs, the answer starting on a new line.
        return "\n\n".join(m["content"] for m in messages) + "\n" + assistant_prefix

    def encode(self, text: str) -> list[int]:
        """Token ids of a rendered prompt (the chat template already holds special tokens)."""
        ids = self.tokenizer(text, add_special_tokens=not self.use_chat_template)["input_ids"]
        return list(ids)
