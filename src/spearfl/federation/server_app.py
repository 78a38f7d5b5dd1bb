"""The Flower ServerApp: sample clients, send the global adapter, aggregate, evaluate, record.

Clients are sampled by *client id* (data partition) with a seeded generator, so the same seed
selects the same clients on the simulation engine and on a real federation; a ``query`` round
at start-up maps client ids to the node ids of the SuperNodes serving them.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from spearfl.config import Config, save_config
from spearfl.evaluation.evaluator import Evaluator
from spearfl.federation.aggregation import ServerOptimizer, weighted_average
from spearfl.federation.client_app import ADAPTER, CONFIG, METRICS
from spearfl.federation.partition import partition_summary
from spearfl.federation.worker import shared_policy, shared_task_data
from spearfl.models.adapter import save_adapter
from spearfl.reporting.curves import plot_curves
from spearfl.reporting.history import HistoryWriter, read_history, summarize, write_summary

log = logging.getLogger(__name__)


def select_clients(num_clients: int, per_round: int, seed: int, round_num: int) -> list[int]:
    """The clients of a round: depends only on (seed, round), never on node ids or timing."""
    rng = random.Random(f"select-{seed}-{round_num}")
    return sorted(rng.sample(range(num_clients), min(per_round, num_clients)))


def should_evaluate(cfg: Config, round_num: int) -> bool:
    d = cfg.data
    return (
        round_num == cfg.fl.rounds
        or round_num % d.eval_every == 0
        or round_num <= d.eval_every_round_up_to
    )


class RoundObserver:
    """Hooks for progress display; the default does nothing."""

    def round_started(self, round_num: int, clients: list[int]) -> None: ...
    def client_done(self, round_num: int, client_id: int, metrics: dict[str, float]) -> None: ...
    def round_done(self, entry: dict[str, Any]) -> None: ...
    def evaluating(self, round_num: int) -> None: ...


@dataclass
class Reply:
    client_id: int
    adapter: dict[str, torch.Tensor]
    metrics: dict[str, float]


@dataclass
class FederatedServer:
    cfg: Config
    run_dir: Path
    observer: RoundObserver = field(default_factory=RoundObserver)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.policy = shared_policy(self.cfg)
        self.task, data, self.parts = shared_task_data(self.cfg)
        self.evaluator = Evaluator(
            self.policy,
            self.task,
            data.eval,
            batch_size=self.cfg.gen.eval_batch_size,
            max_new_tokens=self.cfg.gen.eval_max_new_tokens or self.cfg.gen.max_new_tokens_y0,
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
        return self.evaluator.evaluate()

    def save(self, name: str) -> None:
        save_adapter(self.policy.model, self.global_adapter, self.run_dir / "adapters" / name)

    def aggregate(self, replies: list[Reply]) -> None:
        weights = [r.metrics["n_eff"] for r in replies]
        averaged = weighted_average([r.adapter for r in replies], weights)
        self.global_adapter = self.optimizer.step(self.global_adapter, averaged)

    # -------------------------------------------------------------------- run
    def run(
        self, train_round: Callable[[int, list[int], dict[str, torch.Tensor]], list[Reply]]
    ) -> dict:
        """All rounds; ``train_round`` delivers the selected clients' replies."""
        started = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.run_dir / "config.yaml")
        (self.run_dir / "partition.json").write_text(
            _json(partition_summary(self.parts, self.labels))
        )
        writer = HistoryWriter(self.run_dir)
        entry0 = {"round": 0, "clients": [], "client_metrics": {}, "eval": self.evaluate(0)}
        writer.append(entry0)
        self.save("round_0000")
        self.observer.round_done(entry0)
        fl = self.cfg.fl
        for r in range(1, fl.rounds + 1):
            t0 = time.perf_counter()
            clients = select_clients(
                self.cfg.data.num_clients, fl.clients_per_round, self.cfg.data.seed, r
            )
            self.observer.round_started(r, clients)
            replies = train_round(r, clients, self.global_adapter)
            self.aggregate(replies)
            entry: dict[str, Any] = {
                "round": r,
                "clients": [rep.client_id for rep in replies],
                "client_metrics": {str(rep.client_id): rep.metrics for rep in replies},
                "eval": None,
            }
            if should_evaluate(self.cfg, r):
                entry["eval"] = self.evaluate(r)
                self.save(f"round_{r:04d}")
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            writer.append(entry)
            self.observer.round_done(entry)
        self.save("final")
        history = read_history(self.run_dir)
        summary = summarize(history, time.perf_counter() - started)
        write_summary(self.run_dir, summary)
        plot_curves(history, self.run_dir / "curves.png")
        return summary


def _json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2)


# ---------------------------------------------------------------- Flower glue
def map_clients(grid: Grid, expected: int, timeout: float = 600.0) -> dict[int, int]:
    """Ask every node which client id it serves: ``{client_id: node_id}``."""
    deadline = time.monotonic() + timeout
    mapping: dict[int, int] = {}
    while time.monotonic() < deadline:
        node_ids = list(grid.get_node_ids())
        unknown = [n for n in node_ids if n not in mapping.values()]
        if unknown:
            messages = [
                Message(RecordDict({}), dst_node_id=n, message_type=MessageType.QUERY)
                for n in unknown
            ]
            for reply in grid.send_and_receive(messages, timeout=60):
                if reply.has_error():
                    continue
                cid = int(reply.content[CONFIG]["client_id"])
                mapping[cid] = reply.metadata.src_node_id
        if len(mapping) >= expected:
            return mapping
        time.sleep(1.0)
    raise RuntimeError(f"only {len(mapping)} of {expected} clients connected within {timeout:.0f}s")


def grid_round_runner(grid: Grid, cfg: Config, observer: RoundObserver):
    """A ``train_round`` function that sends train messages through a Flower Grid."""
    mapping = map_clients(grid, cfg.data.num_clients)
    cfg_json = cfg.to_json()

    def train_round(
        round_num: int, clients: list[int], adapter: dict[str, torch.Tensor]
    ) -> list[Reply]:
        record = ArrayRecord({k: v.contiguous() for k, v in adapter.items()})
        messages = [
            Message(
                RecordDict(
                    {ADAPTER: record, CONFIG: ConfigRecord({"json": cfg_json, "round": round_num})}
                ),
                dst_node_id=mapping[c],
                message_type=MessageType.TRAIN,
            )
            for c in clients
        ]
        node_to_client = {mapping[c]: c for c in clients}
        replies = []
        for msg in _gather(grid, messages):
            cid = node_to_client[msg.metadata.src_node_id]
            if msg.has_error():
                log.error("client %d failed: %s", cid, msg.error.reason)
                continue
            metrics = dict(msg.content[METRICS])
            observer.client_done(round_num, cid, metrics)
            replies.append(Reply(cid, dict(msg.content[ADAPTER].to_torch_state_dict()), metrics))
        if not replies:
            raise RuntimeError(f"round {round_num}: no client replied successfully")
        return sorted(replies, key=lambda r: r.client_id)

    return train_round


def _gather(grid: Grid, messages: list[Message]) -> Iterable[Message]:
    """Push all messages, then yield replies as they arrive (for live progress)."""
    ids = list(grid.push_messages(messages))
    pending = set(ids)
    while pending:
        got = list(grid.pull_messages(list(pending)))
        for msg in got:
            pending.discard(msg.metadata.reply_to_message_id)
            yield msg
        if not got:
            time.sleep(0.2)


def build_server_app(
    cfg: Config, run_dir: Path, observer: RoundObserver | None = None, result: dict | None = None
) -> ServerApp:
    """A ServerApp bound to a config and run directory (used by ``spearfl run``)."""
    app = ServerApp()
    obs = observer or RoundObserver()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        server = FederatedServer(cfg, run_dir, obs)
        summary = server.run(grid_round_runner(grid, cfg, obs))
        if result is not None:
            result.update(summary)

    return app
