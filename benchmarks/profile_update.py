"""Where a client update's time goes: its phases, then the operators under them.

Runs one client update of the config (round ``--round``, client ``--client``, from the initial
adapter; updates are seeded from (seed, round, client), so every run repeats the same one)
twice. The first run times the phases by wrapping the functions that do the work: the shared
prompt prefix, each batch's prefill, the token-by-token decoding, the feedback provider, and the
optimiser steps. The second runs under ``torch.profiler`` and prints the operators with the
most time of their own (profiling slows small operators down, so read shares from it, and
seconds from the first run).

    .venv/bin/python benchmarks/profile_update.py [CONFIG] [--round 1] [--client 3] [--top 15]
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from spearfl.algorithms import spear as spear_module
from spearfl.config import load_config
from spearfl.federation.worker import ClientWorker
from spearfl.feedback.base import FeedbackProvider
from spearfl.models import generation
from spearfl.presets import default_config_path

PHASES = ("prefix", "prefill", "decode", "feedback", "train")


class PhaseClock:
    """Seconds and calls per phase, summed over the wrapped functions' calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.active = False

    def wrap(self, phase: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if not self.active:
                return fn(*args, **kwargs)
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - started
                self.calls[phase] += 1

        return timed


@contextmanager
def phases_timed(clock: PhaseClock, provider: type[FeedbackProvider]) -> Iterator[None]:
    """Wrap the functions each phase is made of; put them back afterwards."""
    runner = generation.PrefixRunner
    patched: list[tuple[Any, str, Any]] = [
        (runner, "__init__", runner.__init__),
        (runner, "prefill", runner.prefill),
        (generation, "decode", generation.decode),
        (spear_module, "run_local_steps", spear_module.run_local_steps),
    ]
    patched += [(provider, "check", provider.check), (provider, "feedback", provider.feedback)]
    names = {"__init__": "prefix", "prefill": "prefill", "decode": "decode"}
    names |= {"run_local_steps": "train", "check": "feedback", "feedback": "feedback"}
    try:
        for owner, attr, fn in patched:
            setattr(owner, attr, clock.wrap(names[attr], fn))
        yield
    finally:
        for owner, attr, fn in patched:
            setattr(owner, attr, fn)


def one_update(worker: ClientWorker, adapter: dict[str, torch.Tensor], round_num: int, cid: int):
    return worker.train(dict(adapter), round_num, cid)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default=str(default_config_path()))
    parser.add_argument("--round", type=int, default=1)
    parser.add_argument("--client", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    worker = ClientWorker.for_client(cfg, args.client)
    adapter = worker.policy.get_adapter()
    one_update(worker, adapter, args.round, args.client)  # warm-up: first-call costs out

    clock = PhaseClock()
    with phases_timed(clock, type(worker.algorithm.provider)):
        clock.active = True
        started = time.perf_counter()
        result = one_update(worker, adapter, args.round, args.client)
        total = time.perf_counter() - started
        clock.active = False
    m = result.metrics
    rollout, train = float(m["rollout_seconds"]), float(m["train_seconds"])
    rows = {p: {"seconds": round(clock.seconds[p], 2), "calls": clock.calls[p]} for p in PHASES}
    rollout_rest = rollout - sum(clock.seconds[p] for p in ("prefix", "prefill", "decode"))
    rollout_rest -= clock.seconds["feedback"]
    summary = {
        "torch_threads": torch.get_num_threads(),
        "update_s": round(total, 2),
        "rollout_s": round(rollout, 2),
        "train_s": round(train, 2),
        "tokens_generated": int(m["tokens_generated"]),
        "wins": int(m["wins"]),
        "losses": int(m["losses"]),
        "phases": rows,
        "rollout_other_s": round(rollout_rest, 2),
        "outside_rollout_and_train_s": round(total - rollout - train, 2),
    }
    print(json.dumps(summary, indent=2), flush=True)

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        one_update(worker, adapter, args.round, args.client)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top)
    print(table)


if __name__ == "__main__":
    main()
