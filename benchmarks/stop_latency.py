"""How long a run takes to stop on a signal, and which of its processes outlive it.

Starts ``spearfl run`` as the leader of its own process group (as a terminal's foreground job
is), waits until round 1 is checkpointed, sends one signal (``int``: SIGINT to the group, as
Ctrl-C does; ``term``: SIGTERM to the process; ``kill``: SIGKILL to the process), and reports
the seconds until the process exited and until every process of its tree was gone:

    .venv/bin/python benchmarks/stop_latency.py int [CONFIG] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from spearfl.federation.checkpoint import checkpoint_round
from spearfl.presets import default_config_path

SIGNALS = {"int": signal.SIGINT, "term": signal.SIGTERM, "kill": signal.SIGKILL}


def family(pid: int) -> dict[int, str]:
    try:
        parent = psutil.Process(pid)
        return {p.pid: p.name() for p in [parent, *parent.children(recursive=True)]}
    except psutil.NoSuchProcess:
        return {}


def running(pids) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("signal", choices=sorted(SIGNALS))
    parser.add_argument("config", nargs="?", default=str(default_config_path()))
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--watch", type=float, default=180.0, help="seconds to watch survivors")
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="stop-latency-")) / "run"
    sets = [a for item in [*args.set, f"output_dir={run_dir}"] for a in ("--set", item)]
    log = open(run_dir.parent / "run.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "spearfl.cli.main", "run", args.config, *sets],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    while (checkpoint_round(run_dir) if (run_dir / "config.yaml").exists() else None) in (None, 0):
        if proc.poll() is not None:
            sys.exit(f"the run ended before round 1; see {log.name}")
        time.sleep(0.05)
    tree = family(proc.pid)
    sig = SIGNALS[args.signal]
    sent = time.monotonic()
    (os.killpg if sig == signal.SIGINT else os.kill)(proc.pid, sig)
    code = proc.wait()
    exited = time.monotonic() - sent
    survivors: dict[str, float] = {}
    while running(tree) and time.monotonic() - sent < args.watch:
        for pid in running(tree):
            survivors[f"{pid} {tree[pid]}"] = round(time.monotonic() - sent, 1)
        time.sleep(0.5)
    print(
        json.dumps(
            {
                "signal": sig.name,
                "exit_status": code,
                "round_checkpointed": checkpoint_round(run_dir),
                "seconds_to_exit": round(exited, 2),
                "processes_in_tree": len(tree),
                "last_seen_after_signal_s": survivors,
                "still_running": [f"{p} {tree[p]}" for p in running(tree)],
                "last_line": Path(log.name).read_text().strip().splitlines()[-1],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
