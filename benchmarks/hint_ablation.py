"""Revision success with the oracle's hint versus a bare "That is not right." (no training).

Answers a fixed set of training prompts once, then revises every wrong answer twice: once told
the hint, once told only that it was wrong. Same prompts, same first answers, same sampling.

    .venv/bin/python benchmarks/hint_ablation.py [CONFIG] [--prompts 128] [--adapter DIR]

``--adapter`` loads a saved global adapter (e.g. ``runs/demo/adapters/final``) first, to see how
a trained model uses the hint.
"""

from __future__ import annotations

import argparse
import json
import random

from spearfl.algorithms.rollout import self_play_rollout
from spearfl.config import load_config
from spearfl.federation.worker import shared_policy, shared_task_data
from spearfl.models.adapter import load_adapter
from spearfl.presets import default_config_path
from spearfl.tasks.registry import build_feedback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", nargs="?", default=str(default_config_path()))
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--adapter", help="a PEFT adapter folder to load first")
    args = parser.parse_args()
    cfg = load_config(args.config, args.set)
    policy = shared_policy(cfg)
    if args.adapter:
        load_adapter(policy.model, args.adapter)
    task, data, _ = shared_task_data(cfg)
    provider = build_feedback(cfg, task)
    prompts = random.Random(cfg.data.seed).sample(data.train, args.prompts)
    report = {}
    for label, hints in (("hint", True), ("bare", False)):
        import torch

        torch.manual_seed(cfg.data.seed)  # identical first answers in both arms
        result = self_play_rollout(policy, task, provider, prompts, cfg.gen, hints=hints)
        s = result.stats
        wrong = s["num_rollouts"] - s["y0_correct"]
        fixed = s["revisions_successful"]
        report[label] = {
            "prompts": s["num_rollouts"],
            "first_answer_correct": s["y0_correct"],
            "wrong_first_answers": wrong,
            "revisions_attempted": s["revisions_attempted"],
            "fixed_by_revision": fixed,
            "fixed_share_of_wrong": round(fixed / wrong, 3) if wrong else None,
            "success_per_attempt": round(fixed / s["revisions_attempted"], 3)
            if s["revisions_attempted"]
            else None,
        }
        print(label, json.dumps(report[label]), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
