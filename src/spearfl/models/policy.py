"""The trainable policy a process holds: base model + LoRA adapter, prompts in, tokens out.

One per process: the base model is loaded once and reused by every round and every client that
process serves; only adapter tensors are swapped in and out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from spearfl.config import Config
from spearfl.hub import hub_caches
from spearfl.models.adapter import attach_lora, get_adapter_state, set_adapter_state
from spearfl.models.generation import AnswerStop, Completion, generate
from spearfl.models.loading import load_base_model
from spearfl.models.prompts import PromptFormatter
from spearfl.models.trunk import forget_frozen_states
from spearfl.tasks.base import Example, Message, Task

SKIP_PROMPT_ADVICE = (
    "raise model.max_seq_len, or set data.skip_bad_rows: true to skip such prompts and count "
    "them (metric skipped_prompts)"
)


class PromptTooLongError(ValueError):
    """A prompt that leaves no room for a single new token within ``model.max_seq_len``.

    Cutting it would drop the chat header or the instructions (its start) or the answer slot
    (its end), and a 1-token answer is no answer: the example is named instead."""


def describe_example(task_name: str, example: Example) -> str:
    """``task 'strategyqa', example 'abc' (train.jsonl, row 12)``: enough to find the row."""
    where = ""
    if "source" in example.meta and "row" in example.meta:
        where = f" ({example.meta['source']}, row {example.meta['row']})"
    return f"task {task_name!r}, example {example.uid!r}{where}"


def fit_prompts(
    prompts: Sequence[Sequence[int]],
    examples: Sequence[Example],
    *,
    max_seq_len: int,
    task_name: str,
    kind: str,
    skip: bool,
) -> list[int]:
    """Indices of the prompts that leave room for at least one new token.

    A prompt that does not raises :class:`PromptTooLongError` naming its example, or with
    ``skip`` (``data.skip_bad_rows``) is left out; the caller counts what was left out.
    """
    kept = []
    for i, (prompt, example) in enumerate(zip(prompts, examples, strict=True)):
        if len(prompt) < max_seq_len:
            kept.append(i)
        elif not skip:
            raise PromptTooLongError(
                f"{describe_example(task_name, example)}: its {kind} prompt has {len(prompt)} "
                f"tokens, model.max_seq_len = {max_seq_len} leaves no room for an answer; "
                + SKIP_PROMPT_ADVICE
            )
    return kept


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
        """The prompt's token ids, whole: an over-long one is refused where it is generated
        from (:func:`fit_prompts`), never cut."""
        return self.formatter.encode(self.formatter.render(messages, assistant_prefix))

    def token_budgets(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[int]:
        """Each prompt's budget: ``max_new_tokens``, capped by what ``max_seq_len`` leaves."""
        budgets = [min(max_new_tokens, self.max_seq_len - len(p)) for p in prompts]
        for row, (prompt, budget) in enumerate(zip(prompts, budgets)):
            if budget < 1:
                raise PromptTooLongError(
                    f"prompt {row} has {len(prompt)} tokens, model.max_seq_len = "
                    f"{self.max_seq_len} leaves no room for an answer; {SKIP_PROMPT_ADVICE}"
                )
        return budgets

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        do_sample: bool,
        temperature: float = 1.0,
        top_p: float = 1.0,
        batch_size: int = 16,
        stop_when: AnswerStop | None = None,
    ) -> list[Completion]:
        """One completion per prompt, each within its own budget (:meth:`token_budgets`),
        ending at EOS or, with ``stop_when``, once its answer is declared."""
        return generate(
            self.model,
            self.tokenizer,
            prompts,
            max_new_tokens=self.token_budgets(prompts, max_new_tokens),
            stop_when=stop_when,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            batch_size=batch_size,
        )

    def get_adapter(self) -> dict[str, torch.Tensor]:
        return get_adapter_state(self.model)

    def set_adapter(self, state: dict[str, torch.Tensor]) -> None:
        """Load an adapter; a client update starts, so the last one's kept states go."""
        set_adapter_state(self.model, state)
        forget_frozen_states(self.model)

    @contextmanager
    def adapter_swapped(self, state: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """Score with ``state`` for the duration, then restore the current tensors.

        Within an update (a KL reference): the frozen layers' kept states stay, since an adapter
        never changes them. The saved copy is one adapter (CPU, float32), never a second model,
        which matters on an edge device where the frozen base model dominates memory.
        """
        current = self.get_adapter()
        set_adapter_state(self.model, dict(state))
        try:
            yield
        finally:
            set_adapter_state(self.model, current)

    @property
    def dropout_free(self) -> bool:
        """No dropout anywhere, so training-mode log-probs equal eval-mode ones (to rounding)."""
        if getattr(self.model.config, "attention_dropout", 0.0):
            return False
        return not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in self.model.modules())

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}


def question_prompts(policy: Policy, task: Task, examples: Sequence[Example]) -> list[list[int]]:
    """Each example's question as the task asks it, encoded (``Policy.encode``)."""
    return [policy.encode(task.messages(ex), task.assistant_prefix(ex)) for ex in examples]
