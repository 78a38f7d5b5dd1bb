"""What a device worker saves on Flower's deployment engine: the same run with and without one.

A SuperLink and 3 SuperNodes on 127.0.0.1 (the tests' ``tests/flower_cluster.py``), the tiny
Llama of the tests, N rounds of 2 clients, once on Flower's plain path (a fresh ClientApp
process loads torch and the model for every message) and once with a ``spearfl worker`` beside
each SuperNode. Prints the mean round seconds, the mean ``client_ready_seconds`` (from the
ClientApp's train() to the start of the update) and the distinct client pids per device:

    PYTHONPATH=src .venv/bin/python benchmarks/device_overhead.py [--rounds 4]

Measured with --rounds 3 on 2 CPU cores shared with another job: plain 30.7 s per round,
14.4 s ready (3 pids for 3 updates per device); worker 17.3 s per round, 0.06 s ready (1 pid).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from flower_cluster import LocalFederation  # noqa: E402
from helpers import save_tiny_llama, tiny_run_overrides  # noqa: E402
from spearfl.config import load_config, save_config  # noqa: E402
from spearfl.reporting.history import read_history  # noqa: E402


def run(root: Path, cfg_file: Path, run_dir: Path, workers: bool) -> dict:
    """One run to completion; its round seconds, ready seconds and pids per device."""
    run_config = root / "run-config.toml"
    root.mkdir(parents=True, exist_ok=True)
    run_config.write_text(f'config = "{cfg_file}"\nrun-dir = "{run_dir}"\n')
    fed = LocalFederation(root / "federation", 3, worker_config=cfg_file if workers else None)
    with fed:
        run_id = fed.submit(REPO, run_config)
        status, details = fed.wait(run_id, timeout=3600)
        if status != "finished:completed":
            raise RuntimeError(f"{status} {details}\n{fed.server_log(run_id)[-3000:]}")
    rounds = read_history(run_dir)[1:]
    pids: dict[str, set[int]] = {}
    ready: list[float] = []
    for entry in rounds:
        for cid, m in entry["client_metrics"].items():
            pids.setdefault(cid, set()).add(int(m["client_pid"]))
            ready.append(float(m["client_ready_seconds"]))
    return {
        "mean_round_seconds": round(statistics.mean(e["seconds"] for e in rounds), 2),
        "mean_client_ready_seconds": round(statistics.mean(ready), 3),
        "updates_per_device": {
            c: sum(c in e["client_metrics"] for e in rounds) for c in sorted(pids)
        },
        "distinct_pids_per_device": {c: len(p) for c, p in sorted(pids.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--folder", help="where the runs go (default: a temporary folder)")
    args = parser.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="device-overhead-"))
    model = save_tiny_llama(folder / "tiny-llama")
    results = {}
    for mode in ("plain", "worker"):
        run_dir = folder / mode / "run"
        cfg = load_config(
            None,
            tiny_run_overrides(
                model, run_dir, f"fl.rounds={args.rounds}", "fl.round_timeout=600",
                "data.eval_every=1000",
            ),
        )  # fmt: skip
        cfg_file = folder / mode / "experiment.yaml"
        save_config(cfg, cfg_file)
        results[mode] = run(folder / mode, cfg_file, run_dir, workers=mode == "worker")
        print(mode, json.dumps(results[mode]), flush=True)
    plain, worker = results["plain"], results["worker"]
    print(f"\n{'':8}{'round s':>10}{'ready s':>10}  distinct pids per device (updates)")
    for mode, r in results.items():
        devices = ", ".join(
            f"{c}: {n} ({r['updates_per_device'][c]})"
            for c, n in r["distinct_pids_per_device"].items()
        )
        print(
            f"{mode:8}{r['mean_round_seconds']:>10.2f}{r['mean_client_ready_seconds']:>10.3f}"
            f"  {devices}"
        )
    saved = plain["mean_round_seconds"] - worker["mean_round_seconds"]
    print(f"\nthe worker saves {saved:.2f} s per round ({args.rounds} rounds, 2 clients each)")


if __name__ == "__main__":
    main()
