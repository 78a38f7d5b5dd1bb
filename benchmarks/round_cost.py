"""Cost of one SPEAR round for a config: rollout, training and evaluation seconds, tokens, memory.

Runs in one process (no Ray) so the figures are the client's and the server's own work:

    .venv/bin/python benchmarks/round_cost.py [CONFIG] [--rounds 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from spearfl.algorithms.base import RoundContext
from spearfl.algorithms.registry import build_algorithm
from spearfl.config import load_config
from spearfl.configs import default_config_path
from spearfl.evaluation.evaluator import Evaluator
from spearfl.federation.server import select_clients
from spearfl.federation.worker import shared_policy, shared_task_data
from spearfl.tasks.registry import build_feedback


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", nargs="?", default=str(default_config_path()))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(args.config, args.set)
    t0 = time.perf_counter()
    policy = shared_policy(cfg)
    task, data, parts = shared_task_data(cfg)
    load_seconds = time.perf_counter() - t0
    algorithm = build_algorithm(cfg, policy, task, build_feedback(cfg, task))
    adapter = policy.get_adapter()
    rows = []
    for r in range(1, args.rounds + 1):
        for cid in select_clients(cfg.data.num_clients, cfg.fl.clients_per_round, cfg.data.seed, r):
            t = time.perf_counter()
            result = algorithm.update(
                adapter,
                [data.train[i] for i in parts[cid]],
                RoundContext(r, cfg.fl.rounds, cid, cfg.data.seed),
            )
            m = result.metrics
            rows.append(
                {
                    "round": r,
                    "client": cid,
                    "rollouts": int(m["num_rollouts"]),
                    "wins": int(m["wins"]),
                    "losses": int(m["losses"]),
                    "tokens_generated": int(m["tokens_generated"]),
                    "rollout_s": round(m["rollout_seconds"], 2),
                    "train_s": round(m["train_seconds"], 2),
                    "client_s": round(time.perf_counter() - t, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    evaluator = Evaluator(
        policy,
        task,
        data.eval,
        batch_size=cfg.gen.eval_batch_size,
        max_new_tokens=cfg.gen.eval_max_new_tokens or cfg.gen.max_new_tokens_y0,
    )
    t = time.perf_counter()
    result = evaluator.evaluate()
    eval_seconds = time.perf_counter() - t
    n = len(rows)
    summary = {
        "config": args.config,
        "torch_threads": torch.get_num_threads(),
        "model_load_s": round(load_seconds, 1),
        "client_updates": n,
        "mean_rollout_s": round(sum(r["rollout_s"] for r in rows) / n, 2),
        "mean_train_s": round(sum(r["train_s"] for r in rows) / n, 2),
        "mean_client_update_s": round(sum(r["client_s"] for r in rows) / n, 2),
        "mean_tokens_generated": round(sum(r["tokens_generated"] for r in rows) / n, 1),
        "eval_s": round(eval_seconds, 2),
        "eval_n": result["n"],
        "eval_method": result["method"],
        "eval_accuracy": result["accuracy"],
        "round_s_with_eval": round(
            sum(r["client_s"] for r in rows) / args.rounds + eval_seconds, 2
        ),
        "peak_rss_mb": round(peak_rss_mb(), 0),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
