"""Memory soak: does the server or a client process keep growing from round to round?

Runs the embedded default through the real Flower simulation for N rounds, evaluating only at
round 0 and the end, then reads the run's history: the server's resident memory after each
round's aggregation (``server_rss_mb``) and each client process's after its update (``rss_mb``,
keyed by ``client_pid``: one process serves many clients and rounds). Growth is measured from
round 2 (round 1 still loads and warms up) to the last round; a process that served no client
in two of those rounds has no growth figure.

    .venv/bin/python benchmarks/soak.py [--rounds 20] [--output-dir DIR] [--max-growth 5]
    .venv/bin/python benchmarks/soak.py --analyse RUN_DIR [--max-growth 5]

Exit status: 0 when no growth exceeds ``--max-growth`` percent, 1 when one does, 2 when the run
failed or its history holds no memory figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spearfl.reporting.history import read_history

FIRST_ROUND = 2
"""Growth starts here: round 1 includes loading the model and the first allocations."""


@dataclass(frozen=True)
class Growth:
    """Resident memory of one process at its first and last measured round of the soak."""

    process: str
    first_round: int
    last_round: int
    first_mb: float
    last_mb: float

    @property
    def percent(self) -> float:
        return 100.0 * (self.last_mb - self.first_mb) / self.first_mb


def memory_series(
    history: Sequence[Mapping[str, Any]],
) -> tuple[dict[int, float], dict[int, dict[int, float]]]:
    """(server MB by round, {client pid: MB by round}) from a run's history entries.

    A process that served several clients in a round is measured after the last of them (the
    largest figure, since a round's updates only add to what it holds)."""
    server: dict[int, float] = {}
    clients: dict[int, dict[int, float]] = {}
    for entry in history:
        r = int(entry["round"])
        if isinstance(entry.get("server_rss_mb"), (int, float)):
            server[r] = float(entry["server_rss_mb"])
        for metrics in (entry.get("client_metrics") or {}).values():
            pid, mb = metrics.get("client_pid"), metrics.get("rss_mb")
            if isinstance(pid, (int, float)) and isinstance(mb, (int, float)):
                own = clients.setdefault(int(pid), {})
                own[r] = max(own.get(r, 0.0), float(mb))
    return server, clients


def growth(process: str, series: Mapping[int, float], first_round: int = FIRST_ROUND):
    """The growth of ``series`` from its first round >= ``first_round`` to its last; None when
    fewer than two rounds are measured there."""
    rounds = sorted(r for r in series if r >= first_round)
    if len(rounds) < 2:
        return None
    first, last = rounds[0], rounds[-1]
    return Growth(process, first, last, series[first], series[last])


def growths(history: Sequence[Mapping[str, Any]]) -> list[Growth]:
    """The server's growth, then each client process's (by pid)."""
    server, clients = memory_series(history)
    found = [growth("server", server)]
    found += [growth(f"client pid {pid}", clients[pid]) for pid in sorted(clients)]
    return [g for g in found if g is not None]


def print_table(history: Sequence[Mapping[str, Any]]) -> None:
    server, clients = memory_series(history)
    pids = sorted(clients)
    print("| round | server MB | " + " | ".join(f"pid {p} MB" for p in pids) + " |")
    print("|---|---|" + "---|" * len(pids))
    for r in sorted(set(server) | {r for own in clients.values() for r in own}):
        cells = [_mb(server.get(r))] + [_mb(clients[p].get(r)) for p in pids]
        print(f"| {r} | " + " | ".join(cells) + " |")


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def analyse(run_dir: Path, max_growth: float) -> int:
    """Print the run's memory per round and its growth; the exit status (see the docstring)."""
    history = read_history(run_dir)
    found = growths(history)
    if not found:
        print(f"{run_dir}: no memory figures from round {FIRST_ROUND} on in its history")
        return 2
    print_table(history)
    print()
    for g in found:
        print(
            f"{g.process}: {g.first_mb:,.1f} MB (round {g.first_round}) -> "
            f"{g.last_mb:,.1f} MB (round {g.last_round}): {g.percent:+.2f}%"
        )
    over = [g for g in found if g.percent > max_growth]
    summary = {
        "run_dir": str(run_dir),
        "max_growth_percent": max_growth,
        "growth": [{**asdict(g), "percent": round(g.percent, 2)} for g in found],
        "over_limit": [g.process for g in over],
    }
    print(json.dumps(summary, indent=2))
    return 1 if over else 0


def run_soak(rounds: int, output_dir: Path, extra: Sequence[str]) -> int:
    """``spearfl run`` of the embedded default for ``rounds`` rounds, evaluating only at the
    end; its exit status."""
    command = [
        sys.executable,
        "-m",
        "spearfl.cli.main",
        "run",
        "--set",
        f"fl.rounds={rounds}",
        "--set",
        "data.eval_every=0",
        "--output-dir",
        str(output_dir),
        *(item for pair in (("--set", s) for s in extra) for item in pair),
    ]
    print("$ " + " ".join(command), flush=True)
    return subprocess.run(command, check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/soak"))
    parser.add_argument("--set", action="append", default=[], help="more config overrides")
    parser.add_argument(
        "--max-growth", type=float, default=5.0, help="largest growth allowed, in percent"
    )
    parser.add_argument("--analyse", type=Path, metavar="RUN_DIR", help="analyse, do not run")
    args = parser.parse_args(argv)
    if args.analyse is not None:
        return analyse(args.analyse, args.max_growth)
    status = run_soak(args.rounds, args.output_dir, args.set)
    if status != 0:
        print(f"spearfl run exited with status {status}", file=sys.stderr)
        return 2
    return analyse(args.output_dir, args.max_growth)


if __name__ == "__main__":
    sys.exit(main())
