"""Live progress for a run: a bar over rounds, a bar over the round's clients, a row per round."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from spearfl.federation.server import RoundObserver
from spearfl.reporting.table import COLUMNS, format_round_row


class RichObserver(RoundObserver):
    def __init__(
        self, total_rounds: int, console: Console | None = None, completed: int = 0
    ) -> None:
        self.console = console or Console()
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.rounds = self.progress.add_task("rounds", total=total_rounds, completed=completed)
        self.clients = self.progress.add_task("clients", total=1, visible=False)
        self.wins = self.losses = 0
        self.last_acc: float | None = None
        self.progress.start()
        self.console.print(" | ".join(COLUMNS), soft_wrap=True)

    def _describe(self) -> str:
        acc = "-" if self.last_acc is None else f"{self.last_acc:.3f}"
        return f"rounds (eval acc {acc})"

    def round_started(self, round_num: int, clients: list[int]) -> None:
        self.wins = self.losses = 0
        self.progress.reset(
            self.clients,
            total=len(clients),
            visible=True,
            description=f"round {round_num} clients {clients}",
        )

    def client_done(self, round_num: int, client_id: int, metrics: dict[str, float]) -> None:
        self.wins += int(metrics.get("wins", 0))
        self.losses += int(metrics.get("losses", 0))
        self.progress.update(
            self.clients,
            advance=1,
            description=f"round {round_num}: client {client_id} done, "
            f"wins {self.wins} losses {self.losses}, "
            f"y0 acc {metrics.get('y0_accuracy', 0):.2f}",
        )

    def client_failed(self, round_num: int, client_id: int, reason: str) -> None:
        self.console.print(f"round {round_num}: client {client_id} dropped: {reason}")

    def evaluating(self, round_num: int) -> None:
        self.progress.update(self.rounds, description=f"evaluating round {round_num}")

    def round_done(self, entry: dict[str, Any]) -> None:
        if entry.get("eval"):
            self.last_acc = entry["eval"].get("accuracy")
        if entry["round"] > 0:
            self.progress.advance(self.rounds)
        self.progress.update(self.rounds, description=self._describe())
        row = format_round_row(entry)
        self.console.print(" | ".join(row[c] for c in COLUMNS), soft_wrap=True)

    def close(self) -> None:
        self.progress.stop()
