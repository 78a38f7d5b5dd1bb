"""Seconds of one held-out evaluation, with the frozen layers' states kept and without.

    .venv/bin/python benchmarks/eval_speed.py [CONFIG] [--repeats 2] [--set key=value ...]

Runs the whole model once (the reference), then an evaluator that keeps the frozen layers'
states: its first evaluation builds them, the later ones reuse them. Each evaluation's
per-question outcomes must equal the reference's, or the script fails.
"""

from __future__ import annotations

import argparse
import json
import time

from spearfl.config import load_config
from spearfl.evaluation.evaluator import Evaluator
from spearfl.federation.worker import shared_policy, shared_task_data
from spearfl.presets import default_config_path

OUTCOMES = ("correct", "option_correct")


def timed(evaluator: Evaluator) -> tuple[float, dict]:
    start = time.perf_counter()
    result = evaluator.evaluate()
    return round(time.perf_counter() - start, 2), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", nargs="?", default=str(default_config_path()))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(args.config, args.set)
    policy = shared_policy(cfg)
    task, data, _ = shared_task_data(cfg)
    settings = dict(
        batch_size=cfg.gen.eval_batch_size,
        max_new_tokens=cfg.gen.eval_max_new_tokens or cfg.gen.max_new_tokens_y0,
    )
    whole = Evaluator(policy, task, data.eval, reuse_frozen_states=False, **settings)
    kept = Evaluator(policy, task, data.eval, **settings)
    whole_s, reference = timed(whole)
    runs = [timed(kept) for _ in range(1 + args.repeats)]
    for _, result in runs:
        for key in OUTCOMES:
            if result.get(key) != reference.get(key):
                raise SystemExit(f"{key} differs from the whole model's evaluation")
    print(
        json.dumps(
            {
                "config": args.config,
                "questions": reference["n"],
                "method": reference["method"],
                "accuracy": reference["accuracy"],
                "option_accuracy": reference.get("option_accuracy"),
                "valid_rate": reference.get("valid_rate"),
                "whole_model_s": whole_s,
                "kept_states": kept.frozen_states() is not None,
                "first_with_kept_states_s": runs[0][0],
                "later_with_kept_states_s": [s for s, _ in runs[1:]],
                "same_outcomes": True,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
