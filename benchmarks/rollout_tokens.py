"""Tokens one SPEAR client round generates: the self-play rollout alone (no training, no eval).

    .venv/bin/python benchmarks/rollout_tokens.py [CONFIG] [--prompts 16] [--set key=value ...]

Answers the first ``--prompts`` training questions once (plus revisions of the wrong ones, as a
client round does) with the config's sampling settings and a fixed seed, and prints how many
tokens were generated, per completion and in all, and how long it took.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from spearfl.algorithms.rollout import self_play_rollout
from spearfl.config import load_config
from spearfl.federation.worker import shared_policy, shared_task_data
from spearfl.presets import default_config_path
from spearfl.tasks.registry import build_feedback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", nargs="?", default=str(default_config_path()))
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(args.config, args.set)
    policy = shared_policy(cfg)
    task, data, _ = shared_task_data(cfg)
    provider = build_feedback(cfg, task)
    torch.manual_seed(cfg.data.seed)
    examples = data.train[: args.prompts]
    start = time.perf_counter()
    result = self_play_rollout(policy, task, provider, examples, cfg.gen)
    seconds = time.perf_counter() - start
    s = result.stats
    print(
        json.dumps(
            {
                "prompt_format": policy.prompt_format,
                "prompts": len(examples),
                "completions": s["completions_generated"],
                "tokens_generated": s["tokens_generated"],
                "tokens_per_completion": round(
                    s["tokens_generated"] / max(1, s["completions_generated"]), 1
                ),
                "y0_valid": s["y0_valid"],
                "y0_correct": s["y0_correct"],
                "revisions_attempted": s["revisions_attempted"],
                "skipped_prompts": s.get("skipped_prompts", 0),
                "rollout_s": round(seconds, 1),
                "torch_threads": torch.get_num_threads(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
