"""The model a device's page answers with: the newest global adapter the device has seen.

The page runs beside the device's ClientApp, so it keeps its own copy of the base model (never
the ClientApp's, which a round may be training) and swaps in a newer global adapter whenever a
checkpoint with a higher round appears in one of the folders it watches: the run directory on a
single machine, the device's own folder (written by its ClientApp) in a real federation.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from spearfl.config import Config
from spearfl.federation.checkpoint import CHECKPOINT_FILE, load_checkpoint
from spearfl.federation.worker import shared_task_data
from spearfl.models.policy import Policy
from spearfl.tasks.base import Example, Message

REVISE_FREE = "That is not right. {hint}\nPlease answer again."
"""The revision request for a question typed on the page (queue questions use their task's)."""


@dataclass(frozen=True)
class Prompt:
    """What the model was asked: shown text, chat messages and the assistant's opening."""

    text: str
    messages: list[Message]
    assistant_prefix: str = ""
    example: Example | None = None


class DeviceModel:
    def __init__(self, cfg: Config, client_id: int, watch: Sequence[Path]):
        self.cfg = cfg
        self.client_id = client_id
        self.watch = [Path(p) for p in watch]
        self.policy = Policy.from_config(cfg)  # the round-0 adapter, as the server starts
        self.task, data, parts = shared_task_data(cfg)
        self.queue = [data.train[i] for i in parts[client_id]] if parts else []
        self.by_uid = {ex.uid: ex for ex in self.queue}
        self.round = 0
        self._stamps: dict[Path, float] = {}
        self._lock = threading.Lock()

    def refresh(self) -> int:
        """Load a newer global adapter if one appeared; returns the round now served."""
        with self._lock:
            newest = None
            for folder in self.watch:
                path = folder / CHECKPOINT_FILE
                try:
                    stamp = path.stat().st_mtime_ns
                except FileNotFoundError:
                    continue
                if self._stamps.get(path) == stamp:
                    continue
                self._stamps[path] = stamp
                ckpt = load_checkpoint(folder)
                if ckpt is not None and ckpt.round_num > self.round:
                    if newest is None or ckpt.round_num > newest.round_num:
                        newest = ckpt
            if newest is not None:
                self.policy.set_adapter(newest.adapter)
                self.round = newest.round_num
            return self.round

    def question(self, text: str | None, example_uid: str | None) -> Prompt:
        """A typed question, or one of the device's own (by uid); KeyError if unknown."""
        if example_uid:
            ex = self.by_uid[example_uid]
            messages = self.task.messages(ex)
            return Prompt(self.queue_text(ex), messages, self.task.assistant_prefix(ex), ex)
        return Prompt(text or "", [{"role": "user", "content": text or ""}])

    def queue_text(self, ex: Example) -> str:
        return str(self.task.messages(ex)[-1]["content"])

    def _generate(self, messages: list[Message], prefix: str, max_new_tokens: int) -> str:
        gen = self.cfg.gen
        ids = self.policy.encode(messages, prefix)
        with self._lock:
            [out] = self.policy.generate(
                [ids],
                max_new_tokens=max_new_tokens,
                do_sample=gen.do_sample,
                temperature=gen.temperature,
                top_p=gen.top_p,
                batch_size=1,
            )
        return out.text.strip()

    def answer(self, prompt: Prompt) -> tuple[str, int]:
        """The model's answer and the round of the adapter that gave it."""
        served = self.refresh()
        return self._generate(
            prompt.messages, prompt.assistant_prefix, self.cfg.gen.max_new_tokens_y0
        ), served

    def revise(self, prompt: Prompt, previous: str, hint: str) -> tuple[str, int]:
        """The model's second try, told only the person's hint (SPEAR's revision step)."""
        served = self.refresh()
        if prompt.example is not None:
            messages = self.task.revision_messages(prompt.example, previous, hint)
        else:
            messages = [
                *prompt.messages,
                {"role": "assistant", "content": previous},
                {"role": "user", "content": REVISE_FREE.format(hint=hint)},
            ]
        return self._generate(messages, "", self.cfg.gen.max_new_tokens_y1), served
