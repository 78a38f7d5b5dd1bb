"""The server's round loop, independent of how messages travel.

Each round: draw clients by id from (seed, round), send them the global adapter through a
``send`` function (Flower's Grid in practice, a plain function in tests), check every reply,
retry with other clients when too few usable updates came back, aggregate, evaluate, record the
round in ``history.jsonl`` and replace the checkpoint. Drawing by *client id* makes the same
seed select the same clients on the simulation engine and on a real federation.

A ``stop`` event (set on Ctrl-C or SIGTERM) is checked before anything is committed: a round
it interrupts is dropped whole, whatever arrived of it, so the checkpoint and the history end
at the last round that ran to its end. ``complete.json`` is written last, after the final
adapter, the summary and the curves.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spearfl.config import Config, save_config
from spearfl.evaluation.evaluator import Evaluator
from spearfl.federation.aggregation import ServerOptimizer, weighted_average
from spearfl.federation.checkpoint import (
    Checkpoint,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from spearfl.federation.interrupt import RunInterrupted
from spearfl.federation.memory import peak_rss_mb, rss_mb
from spearfl.federation.partition import partition_summary
from spearfl.federation.validation import rejection_reason
from spearfl.federation.worker import shared_policy, shared_task_data
from spearfl.models.adapter import save_adapter
from spearfl.reporting.curves import plot_curves
from spearfl.reporting.history import (
    HISTORY_FILE,
    SUMMARY_FILE,
    HistoryWriter,
    read_complete,
    read_history,
    summarize,
    truncate_history,
    write_complete,
    write_summary,
)
from spearfl.reporting.records import write_eval_questions
from spearfl.reporting.run_folder import holds_run

log = logging.getLogger(__name__)


def select_clients(num_clients: int, per_round: int, seed: int, round_num: int) -> list[int]:
    """The clients of a round: depends only on (seed, round), never on node ids or timing."""
    rng = random.Random(f"select-{seed}-{round_num}")
    return sorted(rng.sample(range(num_clients), min(per_round, num_clients)))


def should_evaluate(cfg: Config, round_num: int) -> bool:
    """Whether round ``round_num`` (>= 1) is evaluated: the last round, every
    ``data.eval_every``-th round (0: none but the last) and the rounds up to
    ``data.eval_every_round_up_to``. Round 0 always is (``FederatedServer.start``)."""
    d = cfg.data
    return (
        round_num == cfg.fl.rounds
        or (d.eval_every > 0 and round_num % d.eval_every == 0)
        or round_num <= d.eval_every_round_up_to
    )


def record_memory(entry: dict[str, Any], key: str) -> None:
    """Put the server's resident memory now under ``key`` (absent off Linux) and its peak so
    far under ``server_peak_rss_mb``: a run's history then shows whether the server grows."""
    current = rss_mb()
    if current is not None:
        entry[key] = round(current, 1)
    entry["server_peak_rss_mb"] = round(peak_rss_mb(), 1)


class RoundObserver:
    """Hooks for progress display; the default does nothing."""

    def round_started(self, round_num: int, clients: list[int]) -> None: ...
    def client_done(self, round_num: int, client_id: int, metrics: dict[str, float]) -> None: ...
    def client_failed(self, round_num: int, client_id: int, reason: str) -> None: ...
    def round_done(self, entry: dict[str, Any]) -> None: ...
    def evaluating(self, round_num: int) -> None: ...


@dataclass
class Reply:
    client_id: int
    adapter: dict[str, torch.Tensor]
    metrics: dict[str, float]


@dataclass(frozen=True)
class Failure:
    """A client that did not deliver a usable update this round, and why."""

    client_id: int
    reason: str
    attempt: int = 0

    def record(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "reason": self.reason, "attempt": self.attempt}


@dataclass
class Delivery:
    """What sending the global adapter to some clients brought back."""

    replies: list[Reply] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


SendRound = Callable[[int, list[int], dict[str, torch.Tensor]], Delivery]
"""``send(round, client_ids, global_adapter)``: one delivery attempt to those clients."""


class RoundFailed(RuntimeError):
    """Too few clients delivered a usable update, even after every retry."""


class RunFolderTaken(ValueError):
    """A fresh run was asked to write into a folder that holds another run."""


def replacement_clients(
    num_clients: int, tried: Iterable[int], count: int, seed: int, round_num: int, attempt: int
) -> list[int]:
    """Clients not yet tried this round to stand in for failed ones (seeded, like the first
    draw, so a rerun or a resumed run retries with the same clients)."""
    pool = sorted(set(range(num_clients)) - set(tried))
    rng = random.Random(f"retry-{seed}-{round_num}-{attempt}")
    return sorted(rng.sample(pool, min(count, len(pool))))


@dataclass
class RoundOutcome:
    accepted: list[Reply]
    failures: list[Failure]
    rejected: list[Failure]
    attempts: int


@dataclass
class FederatedServer:
    cfg: Config
    run_dir: Path
    observer: RoundObserver = field(default_factory=RoundObserver)
    stop: threading.Event | None = None
    """Set to stop the run at the next check; the round in flight is then not committed."""

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.last_round: int | None = None  # the last round committed (history + checkpoint)
        self.policy = shared_policy(self.cfg)
        self.task, data, self.parts = shared_task_data(self.cfg)
        self.evaluator = Evaluator(
            self.policy,
            self.task,
            data.eval,
            batch_size=self.cfg.gen.eval_batch_size,
            max_new_tokens=self.cfg.gen.eval_max_new_tokens or self.cfg.gen.max_new_tokens_y0,
            skip_bad_rows=self.cfg.data.skip_bad_rows,
        )
        self.labels = [ex.label for ex in data.train]
        fl = self.cfg.fl
        self.optimizer = ServerOptimizer(
            fl.aggregation,
            lr=fl.server_lr,
            beta1=fl.server_beta1,
            beta2=fl.server_beta2,
            tau=fl.server_tau,
        )
        self.global_adapter = self.policy.get_adapter()

    # ------------------------------------------------------------------ pieces
    def evaluate(self, round_num: int) -> dict[str, Any]:
        self.observer.evaluating(round_num)
        self.policy.set_adapter(self.global_adapter)
        return {**self.evaluator.evaluate(), "eval_split": self.task.eval_split_used()}

    def save(self, name: str) -> None:
        save_adapter(self.policy.model, self.global_adapter, self.run_dir / "adapters" / name)

    def aggregate(self, replies: list[Reply]) -> int:
        """Fold the replies into the global adapter; returns how many carried weight.

        Replies with ``n_eff == 0`` (a client with nothing to learn from) carry no weight; when
        no reply carries weight the global adapter stays as it is.
        """
        weighted = [r for r in replies if r.metrics["n_eff"] > 0]
        if not weighted:
            return 0
        averaged = weighted_average(
            [r.adapter for r in weighted], [r.metrics["n_eff"] for r in weighted]
        )
        self.global_adapter = self.optimizer.step(self.global_adapter, averaged)
        return len(weighted)

    def screen(self, round_num: int, reply: Reply, attempt: int) -> Failure | None:
        """A rejection (logged) when the reply fails the checks of ``validation``."""
        reason = rejection_reason(
            self.global_adapter,
            reply.adapter,
            reply.metrics.get("n_eff"),
            self.cfg.fl.max_update_norm,
        )
        if reason is None:
            return None
        log.warning(
            "round %d: update of client %d rejected: %s", round_num, reply.client_id, reason
        )
        self.observer.client_failed(round_num, reply.client_id, f"rejected: {reason}")
        return Failure(reply.client_id, reason, attempt)

    def collect(self, round_num: int, send: SendRound) -> RoundOutcome:
        """Send to the round's clients; while fewer than ``fl.min_clients`` usable updates came
        back, retry with clients not tried yet (up to ``fl.max_round_retries`` times)."""
        fl, seed = self.cfg.fl, self.cfg.data.seed
        clients = select_clients(self.cfg.data.num_clients, fl.clients_per_round, seed, round_num)
        outcome = RoundOutcome([], [], [], 0)
        tried: list[int] = []
        while clients:
            attempt = outcome.attempts
            outcome.attempts += 1
            tried += clients
            self.observer.round_started(round_num, clients)
            delivery = send(round_num, clients, self.global_adapter)
            self.check_stop()  # failures a stop caused are not failures of the clients
            for failure in delivery.failures:
                log.warning(
                    "round %d: client %d failed: %s", round_num, failure.client_id, failure.reason
                )
                self.observer.client_failed(round_num, failure.client_id, failure.reason)
                outcome.failures.append(Failure(failure.client_id, failure.reason, attempt))
            for reply in delivery.replies:
                rejected = self.screen(round_num, reply, attempt)
                if rejected:
                    outcome.rejected.append(rejected)
                else:
                    outcome.accepted.append(reply)
            missing = fl.min_clients - len(outcome.accepted)
            if missing <= 0 or attempt >= fl.max_round_retries:
                break
            clients = replacement_clients(
                self.cfg.data.num_clients, tried, missing, seed, round_num, attempt + 1
            )
        if len(outcome.accepted) < fl.min_clients:
            raise RoundFailed(
                f"round {round_num}: {len(outcome.accepted)} usable update(s) from clients "
                f"{sorted(tried)} after {outcome.attempts} attempt(s); fl.min_clients = "
                f"{fl.min_clients}. The last complete round is checkpointed: fix the clients and "
                f"continue with `spearfl run --resume {self.run_dir}`"
            )
        outcome.accepted.sort(key=lambda r: r.client_id)
        return outcome

    def check_stop(self) -> None:
        """Raise ``RunInterrupted`` when a stop was requested."""
        if self.stop is not None and self.stop.is_set():
            raise RunInterrupted(self.run_dir, self.last_round)

    def checkpoint(self, round_num: int, elapsed: float) -> None:
        torch_rng, python_rng = capture_rng()
        save_checkpoint(
            self.run_dir,
            Checkpoint(
                round_num=round_num,
                adapter=self.global_adapter,
                optimizer=self.optimizer.state_dict(),
                torch_rng=torch_rng,
                python_rng=python_rng,
                elapsed_seconds=elapsed,
            ),
        )
        self.last_round = round_num

    def restore(self) -> tuple[int, float]:
        """Continue from the run directory's checkpoint: (last complete round, seconds spent)."""
        ckpt = load_checkpoint(self.run_dir)
        if ckpt is None:
            return -1, 0.0
        self.global_adapter = dict(ckpt.adapter)
        self.optimizer.load_state_dict(ckpt.optimizer)
        restore_rng(ckpt)
        dropped = truncate_history(self.run_dir, ckpt.round_num)
        if dropped:
            log.info("dropped %d history entr(ies) after round %d", dropped, ckpt.round_num)
        self.last_round = ckpt.round_num
        return ckpt.round_num, ckpt.elapsed_seconds

    def start(self, writer: HistoryWriter) -> None:
        """Round 0: the run's files (the eval questions' ids too, which pair runs question by
        question), the untrained model's accuracy, the first checkpoint."""
        save_config(self.cfg, self.run_dir / "config.yaml")
        (self.run_dir / "partition.json").write_text(
            _json(partition_summary(self.parts, self.labels))
        )
        write_eval_questions(self.run_dir, [ex.uid for ex in self.evaluator.examples])
        entry0 = {"round": 0, "clients": [], "client_metrics": {}, "eval": self.evaluate(0)}
        record_memory(entry0, "server_rss_after_eval_mb")
        self.check_stop()
        writer.append(entry0)
        self.save("round_0000")
        self.observer.round_done(entry0)

    # -------------------------------------------------------------------- run
    def run(
        self,
        send: SendRound,
        resume: bool = False,
        before_round: Callable[[int], None] | None = None,
    ) -> dict:
        """All rounds (from the last checkpoint when ``resume``); ``send`` reaches the clients.

        ``before_round(r)`` is called before each round starts and may block (``spearfl serve``
        waits there until the person asks for the next round). A fresh run refuses a folder
        that holds another run (``RunFolderTaken``); resuming a finished run returns its
        summary and writes nothing."""
        started = time.perf_counter()
        if resume and read_complete(self.run_dir) is not None:
            log.warning("%s is complete; nothing to resume", self.run_dir)
            return json.loads((self.run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
        if not resume and holds_run(self.run_dir):
            raise RunFolderTaken(
                f"{self.run_dir} already holds a run; resume it or write into another folder"
            )
        self.check_stop()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        done, spent = self.restore() if resume else (-1, 0.0)
        writer = HistoryWriter(self.run_dir)
        if done < 0:
            if (self.run_dir / HISTORY_FILE).exists():
                (self.run_dir / HISTORY_FILE).unlink()  # a run that never checkpointed: redo
                writer = HistoryWriter(self.run_dir)
            self.start(writer)
            done = 0
            self.checkpoint(0, time.perf_counter() - started)
        fl = self.cfg.fl
        for r in range(done + 1, fl.rounds + 1):
            self.check_stop()
            if before_round is not None:
                before_round(r)
            self.check_stop()
            entry = self.play_round(r, send)
            self.check_stop()  # the last moment a stop drops this round
            writer.append(entry)
            self.checkpoint(r, spent + time.perf_counter() - started)
            self.observer.round_done(entry)
        self.check_stop()
        self.save("final")
        history = read_history(self.run_dir)
        summary = summarize(history, spent + time.perf_counter() - started)
        write_summary(self.run_dir, summary)
        plot_curves(history, self.run_dir / "curves.png")
        write_complete(self.run_dir, fl.rounds, fl.clients_per_round)
        return summary

    def play_round(self, r: int, send: SendRound) -> dict[str, Any]:
        """Round ``r``: collect the clients' updates, fold them in, evaluate when due; the
        round's history entry."""
        t0 = time.perf_counter()
        outcome = self.collect(r, send)
        weighted = self.aggregate(outcome.accepted)
        entry: dict[str, Any] = {
            "round": r,
            "clients": [rep.client_id for rep in outcome.accepted],
            "client_metrics": {str(rep.client_id): rep.metrics for rep in outcome.accepted},
            "eval": None,
        }
        if outcome.failures or outcome.rejected or weighted < len(outcome.accepted):
            entry["failures"] = [f.record() for f in outcome.failures]
            entry["rejected"] = [f.record() for f in outcome.rejected]
            entry["attempts"] = outcome.attempts
            entry["aggregated"] = weighted
        record_memory(entry, "server_rss_mb")
        if should_evaluate(self.cfg, r):
            entry["eval"] = self.evaluate(r)
            record_memory(entry, "server_rss_after_eval_mb")
            self.save(f"round_{r:04d}")
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        return entry


def _json(data: Any) -> str:
    return json.dumps(data, indent=2)
