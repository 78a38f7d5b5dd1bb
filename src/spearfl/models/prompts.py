"""Turn a task's messages into model input: the chat template, or the plain base-model text.

Tasks write each prompt both ways (chat messages whose user turn also carries the base-model
wording, see :data:`spearfl.tasks.base.Message`); this is the one place that picks. Free-form
conversations with no base-model wording (a question typed on the device page, the embedded
task) are joined into paragraphs for base models.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from spearfl.tasks.base import PLAIN, Message

CHAT_FORMAT = "chat template"
PLAIN_FORMAT = "plain (base model)"

CHAT_TEMPLATE_DATE = "26 Jul 2024"
"""The date handed to chat templates that print one (Llama-3's does, from the clock when none
is given): the same prompt every day, so runs and caches repeat."""


def prompt_format(use_chat_template: bool) -> str:
    """The name the log and ``spearfl check`` show for a prompt format."""
    return CHAT_FORMAT if use_chat_template else PLAIN_FORMAT


def plain_text(messages: list[Message]) -> str:
    """A base model's prompt: the task's own base-model wording, else the turns as paragraphs
    with the answer starting on a new line."""
    worded = [m for m in messages if PLAIN in m]
    if not worded:
        return "\n\n".join(m["content"] for m in messages) + "\n"
    if len(messages) != 1:
        raise ValueError(
            f"a prompt with a base-model wording must be a single user turn, got {len(messages)} "
            "messages"
        )
    return worded[0][PLAIN]


@dataclass
class PromptFormatter:
    tokenizer: PreTrainedTokenizerBase
    use_chat_template: bool

    @property
    def name(self) -> str:
        return prompt_format(self.use_chat_template)

    def render(self, messages: list[Message], assistant_prefix: str = "") -> str:
        if not self.use_chat_template:
            return plain_text(messages) + assistant_prefix
        # Only role and content reach the template (the base-model wording is not for it).
        chat = [{"role": m["role"], "content": m["content"]} for m in messages]
        text = self.tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True, date_string=CHAT_TEMPLATE_DATE
        )
        return text + assistant_prefix

    def encode(self, text: str) -> list[int]:
        """Token ids of a rendered prompt (the chat template already holds special tokens)."""
        ids = self.tokenizer(text, add_special_tokens=not self.use_chat_template)["input_ids"]
        return list(ids)


def text_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a piece of text that follows a prompt (an answer, an option, a letter):
    no special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
