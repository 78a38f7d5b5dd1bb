"""The simulation engine's own share of each round, from a finished run's ``history.jsonl``.

A round's wall time (``seconds``) is the clients' work (rollout and training, as each client
timed it), the server's evaluation when the round has one, and the rest: Flower and Ray
sending the adapter to each client actor and back, the actor getting ready (loading the model
on its first round, swapping the adapter in later), the server's checks, averaging, checkpoint
and history. With one client actor at a time (the default on 2 CPUs) the clients run one after
the other, so that rest is what the engine adds; with several actors side by side it is a lower
bound.

    .venv/bin/python benchmarks/round_overhead.py RUN_DIR [RUN_DIR ...]

Prints a Markdown table per run: per round, then the sums over rounds 2..N (round 1 includes
the one-time model load in each new actor).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def round_rows(history: Path) -> list[dict[str, Any]]:
    """Per trained round: wall, evaluation, client work, client start-up, and the rest."""
    rows = []
    for line in history.read_text().splitlines():
        entry = json.loads(line)
        if int(entry["round"]) == 0:
            continue
        clients = entry["client_metrics"].values()
        work = sum(float(m["rollout_seconds"]) + float(m["train_seconds"]) for m in clients)
        ready = sum(float(m.get("client_ready_seconds", 0.0)) for m in clients)
        evaluation = float((entry.get("eval") or {}).get("seconds") or 0.0)
        wall = float(entry["seconds"])
        rest = wall - evaluation - work
        rows.append(
            {
                "round": int(entry["round"]),
                "wall": wall,
                "eval": evaluation,
                "work": work,
                "ready": ready,
                "rest": rest,
            }
        )
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| round | wall s | eval s | client work s | start-up s | rest s | rest / wall |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    later = [r for r in rows if r["round"] > 1]
    total = {k: sum(r[k] for r in later) for k in ("wall", "eval", "work", "ready", "rest")}
    shown = [*rows, {"round": f"2–{rows[-1]['round']}", **total}] if later else list(rows)
    for r in shown:
        share = r["rest"] / r["wall"] if r["wall"] else 0.0
        lines.append(
            f"| {r['round']} | {r['wall']:.1f} | {r['eval']:.1f} | {r['work']:.1f} | "
            f"{r['ready']:.1f} | {r['rest']:.1f} | {share:.1%} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for run_dir in args.run_dirs:
        print(f"{run_dir}\n\n{table(round_rows(run_dir / 'history.jsonl'))}\n")


if __name__ == "__main__":
    main()
