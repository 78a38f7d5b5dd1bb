"""``benchmarks/soak.py --analyse``: memory growth read from a history the real writer wrote."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from spearfl.reporting.history import HistoryWriter, read_history

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


def _soak():
    spec = importlib.util.spec_from_file_location("soak", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


soak = _soak()


def _write_run(run_dir: Path, server: list[float], pid_a: list[float], pid_b: list[float]):
    """Rounds 0..N as the server writes them: two clients a round, served by two processes
    (pid 101 serves client 0, pid 202 client 3; in round 2 pid 101 serves both)."""
    writer = HistoryWriter(run_dir)
    writer.append({"round": 0, "clients": [], "client_metrics": {}, "eval": {"accuracy": 0.1},
                   "server_rss_after_eval_mb": 700.0, "server_peak_rss_mb": 710.0})  # fmt: skip
    for r, (mb, a, b) in enumerate(zip(server, pid_a, pid_b, strict=True), start=1):
        second = {"client_pid": 101.0, "rss_mb": a + 5} if r == 2 else {"client_pid": 202.0}
        if r != 2:
            second["rss_mb"] = b
        writer.append(
            {
                "round": r,
                "clients": [0, 3],
                "client_metrics": {
                    "0": {"client_id": 0.0, "client_pid": 101.0, "rss_mb": a, "wins": 2.0},
                    "3": {"client_id": 3.0, **second, "wins": 1.0},
                },
                "eval": None,
                "server_rss_mb": mb,
                "server_peak_rss_mb": max(server[:r]) + 10,
            }
        )
    return run_dir


def _analyse(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--analyse", str(run_dir), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _summary(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") :])


def test_growth_per_process_from_round_two(tmp_path):
    run = _write_run(
        tmp_path / "run",
        server=[900.0, 1000.0, 1010.0, 1080.0],
        pid_a=[600.0, 640.0, 641.0, 642.0],
        pid_b=[610.0, 999.0, 620.0, 651.0],
    )
    server, clients = soak.memory_series(read_history(run))
    assert server == {1: 900.0, 2: 1000.0, 3: 1010.0, 4: 1080.0}
    # round 2: pid 101 served both clients; pid 202 served none
    assert clients == {
        101: {1: 600.0, 2: 645.0, 3: 641.0, 4: 642.0},
        202: {1: 610.0, 3: 620.0, 4: 651.0},
    }
    found = {g.process: g for g in soak.growths(read_history(run))}
    assert found["server"].percent == pytest.approx(8.0)  # 1000 -> 1080; round 1 left out
    assert (found["client pid 101"].first_round, found["client pid 101"].last_round) == (2, 4)
    assert found["client pid 101"].percent == pytest.approx(100 * (642 - 645) / 645)
    assert (found["client pid 202"].first_round, found["client pid 202"].first_mb) == (3, 620.0)
    assert found["client pid 202"].percent == pytest.approx(5.0)


def test_exit_status_on_a_growing_and_a_flat_run(tmp_path):
    growing = _write_run(
        tmp_path / "growing",
        server=[900.0, 1000.0, 1010.0, 1080.0],
        pid_a=[600.0, 640.0, 641.0, 642.0],
        pid_b=[610.0, 999.0, 620.0, 630.0],
    )
    done = _analyse(growing)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "server: 1,000.0 MB (round 2) -> 1,080.0 MB (round 4): +8.00%" in done.stdout
    assert _summary(done.stdout)["over_limit"] == ["server"]
    assert _analyse(growing, "--max-growth", "8.5").returncode == 0

    flat = _write_run(
        tmp_path / "flat",
        server=[900.0, 1000.0, 1004.0, 1003.0],
        pid_a=[600.0, 640.0, 641.0, 641.0],
        pid_b=[610.0, 999.0, 620.0, 619.0],
    )
    done = _analyse(flat)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = _summary(done.stdout)
    assert summary["over_limit"] == []
    assert [g["percent"] for g in summary["growth"]] == [0.3, round(100 * -4 / 645, 2), -0.16]
    assert "| 2 | 1,000.0 | 645.0 | - |" in done.stdout


def test_a_history_without_memory_figures_is_status_two(tmp_path):
    writer = HistoryWriter(tmp_path)
    for r in range(3):
        writer.append({"round": r, "clients": [0], "client_metrics": {"0": {"wins": 1.0}}})
    done = _analyse(tmp_path)
    assert done.returncode == 2
    assert "no memory figures from round 2 on" in done.stdout
