"""Cost of SPEAR rounds for a config: rollout, training, evaluation and overhead seconds, tokens,
memory.

Runs in one process (no Ray) so the figures are the client's and the server's own work, but
round after round as ``spearfl run`` does: the server draws each round's clients and screens
their replies (``FederatedServer.collect``), folds them into the global adapter with their
``n_eff`` weights (``FederatedServer.aggregate``: FedAvg, then the server optimiser) and
evaluates the rounds a run would (``should_evaluate``). Round 2 therefore starts from round 1's
aggregate, and since client updates are seeded from (seed, round, client), the client metrics
(wins, losses, tokens) are those of ``spearfl run`` with the same config. ``--rounds N`` runs
the config as an N-round run (``fl.rounds=N``: the learning-rate schedule and the evaluated
rounds follow it); add ``--set data.eval_every=1`` to time an evaluation every round.

    .venv/bin/python benchmarks/round_cost.py [CONFIG] [--rounds 2] [--set key=value ...]

Prints one JSON line per client update and per round, then a JSON summary. Overhead is a
client's wall time minus its rollout and training seconds (building the worker, copying the
adapter, scoring and bookkeeping between the two).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from spearfl.config import Config, load_config
from spearfl.federation.memory import peak_rss_mb, rss_mb
from spearfl.federation.server import Delivery, FederatedServer, Reply, SendRound, should_evaluate
from spearfl.federation.worker import ClientWorker
from spearfl.presets import default_config_path


def client_row(round_num: int, client_id: int, metrics: dict[str, float]) -> dict[str, Any]:
    """One client update's figures, from the metrics its reply carries."""
    overhead = metrics["client_seconds"] - metrics["rollout_seconds"] - metrics["train_seconds"]
    return {
        "round": round_num,
        "client": client_id,
        "rollouts": int(metrics["num_rollouts"]),
        "wins": int(metrics["wins"]),
        "losses": int(metrics["losses"]),
        "n_eff": metrics["n_eff"],
        "tokens_generated": int(metrics["tokens_generated"]),
        "rollout_s": round(metrics["rollout_seconds"], 2),
        "train_s": round(metrics["train_seconds"], 2),
        "overhead_s": round(overhead, 2),
        "client_s": round(metrics["client_seconds"], 2),
        "rss_mb": _mb(metrics.get("rss_mb")),
    }


def local_send(cfg: Config) -> SendRound:
    """The server's ``send``: each client's real update (``ClientWorker``) in this process,
    timed, with the metrics a ClientApp reply carries."""

    def send(round_num: int, clients: list[int], adapter: dict[str, torch.Tensor]) -> Delivery:
        delivery = Delivery()
        for cid in clients:
            started = time.perf_counter()
            result = ClientWorker.for_client(cfg, cid).train(dict(adapter), round_num, cid)
            state = {k: v.detach().to("cpu").clone() for k, v in result.adapter.items()}
            metrics = {
                k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))
            }
            metrics["n_eff"] = float(result.n_eff)
            metrics["client_seconds"] = time.perf_counter() - started
            current = rss_mb()
            if current is not None:
                metrics["rss_mb"] = current
            delivery.replies.append(Reply(cid, state, metrics))
        return delivery

    return send


def _mb(value: float | None) -> float | None:
    return None if value is None else round(value, 0)


def _mean(rows: Sequence[dict[str, Any]], key: str, digits: int = 2) -> float | None:
    values = [row[key] for row in rows if row[key] is not None]
    return round(sum(values) / len(values), digits) if values else None


def measure(cfg: Config) -> dict[str, Any]:
    """Every round of ``cfg`` in this process; per-client rows, per-round rows and a summary."""
    started = time.perf_counter()
    # Nothing is written to the run folder: only collect, aggregate and evaluate are used.
    server = FederatedServer(cfg, Path(cfg.output_dir))
    load_seconds = time.perf_counter() - started
    send = local_send(cfg)
    clients: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    for r in range(1, cfg.fl.rounds + 1):
        t0 = time.perf_counter()
        outcome = server.collect(r, send)
        weighted = server.aggregate(outcome.accepted)
        mine = [client_row(r, rep.client_id, rep.metrics) for rep in outcome.accepted]
        for row in mine:
            print(json.dumps(row), flush=True)
        clients += mine
        row: dict[str, Any] = {
            "round": r,
            "clients": [rep.client_id for rep in outcome.accepted],
            "aggregated": weighted,
            "wins": sum(c["wins"] for c in mine),
            "losses": sum(c["losses"] for c in mine),
            "tokens_generated": sum(c["tokens_generated"] for c in mine),
            "rollout_s": round(sum(c["rollout_s"] for c in mine), 2),
            "train_s": round(sum(c["train_s"] for c in mine), 2),
            "overhead_s": round(sum(c["overhead_s"] for c in mine), 2),
            "rss_mb": _mb(rss_mb()),
            "eval_s": None,
            "eval_accuracy": None,
        }
        if should_evaluate(cfg, r):
            t = time.perf_counter()
            result = server.evaluate(r)
            row["eval_s"] = round(time.perf_counter() - t, 2)
            row["eval_accuracy"] = result["accuracy"]
            row["eval_n"] = result["n"]
            row["rss_after_eval_mb"] = _mb(rss_mb())
        row["peak_rss_mb"] = _mb(peak_rss_mb())
        row["round_s"] = round(time.perf_counter() - t0, 2)
        print(json.dumps(row), flush=True)
        rounds.append(row)
    evaluated = [row for row in rounds if row["eval_s"] is not None]
    summary = {
        "torch_threads": torch.get_num_threads(),
        "rounds": cfg.fl.rounds,
        "model_load_s": round(load_seconds, 1),
        "client_updates": len(clients),
        "mean_rollout_s": _mean(clients, "rollout_s"),
        "mean_train_s": _mean(clients, "train_s"),
        "mean_overhead_s": _mean(clients, "overhead_s"),
        "mean_client_update_s": _mean(clients, "client_s"),
        "mean_tokens_generated": _mean(clients, "tokens_generated", 1),
        "eval_rounds": [row["round"] for row in evaluated],
        "mean_eval_s": _mean(evaluated, "eval_s"),
        "final_eval_accuracy": evaluated[-1]["eval_accuracy"] if evaluated else None,
        "mean_round_s": _mean(rounds, "round_s"),
        "rss_mb": rounds[-1]["rss_mb"] if rounds else None,
        "peak_rss_mb": _mb(peak_rss_mb()),
    }
    return {"clients": clients, "rounds": rounds, "summary": summary}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default=str(default_config_path()))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args(argv)
    cfg = load_config(args.config, [*args.set, f"fl.rounds={args.rounds}"])
    result = measure(cfg)
    print(json.dumps({"config": args.config, **result["summary"]}, indent=2))


if __name__ == "__main__":
    main()
