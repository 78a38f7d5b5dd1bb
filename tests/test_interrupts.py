"""One Ctrl-C or SIGTERM stops everything (page, federation, Ray) and leaves a resumable run;
the Ray processes a SIGKILLed run leaves behind are stopped by the next start.

Every command runs as a child process leading its own process group, as a terminal's
foreground job does, so ``os.killpg(pid, SIGINT)`` is what Ctrl-C sends. Processes are checked
by pid with psutil.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from flower_cluster import free_port
from helpers import (
    file_hashes,
    kill_tree,
    process_family,
    spawn_spearfl,
    still_running,
    tiny_run_overrides,
    wait_for_page,
    wait_until,
)
from spearfl.cli.main import main
from spearfl.config import load_config, save_config
from spearfl.federation.checkpoint import checkpoint_round
from spearfl.reporting.history import SUMMARY_FILE, read_complete, read_history
from spearfl.reporting.run_folder import run_state

pytestmark = pytest.mark.slow


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.strip()]


def _ray_is_up(proc) -> bool:
    return any(name.startswith("ray::") for name in process_family(proc.pid).values())


def _reached(run_dir: Path, round_num: int) -> bool:
    return (checkpoint_round(run_dir) or 0) >= round_num


def _all_gone(pids, timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while still_running(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return still_running(pids)


def _stop(proc, sig: int, group: bool) -> int:
    """Send ``sig`` once; the exit status (the process tree is killed if it hangs)."""
    (os.killpg if group else os.kill)(proc.pid, sig)
    try:
        return proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            kill_tree(proc)


def _only_full_rounds(run_dir: Path, last: int, clients: int = 2) -> None:
    history = read_history(run_dir)
    assert [e["round"] for e in history] == list(range(last + 1))
    assert all(len(e["clients"]) == clients for e in history[1:])


def test_sigterm_stops_a_run_after_its_last_complete_round(tiny_model_dir, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    overrides = tiny_run_overrides(tiny_model_dir, run_dir, "fl.rounds=40")
    proc = spawn_spearfl(log, "run", *_sets(overrides), own_group=True)
    wait_until(lambda: _reached(run_dir, 1), proc, log, 600, "round 1")
    family = process_family(proc.pid)
    assert any(name.startswith("ray::") for name in family.values())

    assert _stop(proc, signal.SIGTERM, group=False) == 128 + signal.SIGTERM
    assert _all_gone(family) == []
    done = checkpoint_round(run_dir)
    assert 1 <= done < 40
    resume = [line for line in _lines(log) if "resume" in line]
    assert resume == [
        f"interrupted by SIGTERM: {run_dir} stopped after round {done}; "
        f"resume with: spearfl run --resume {run_dir}"
    ]
    assert "Traceback" not in log.read_text()
    _only_full_rounds(run_dir, done)
    assert not (run_dir / SUMMARY_FILE).exists() and read_complete(run_dir) is None


def test_ray_processes_a_killed_run_left_are_stopped_by_the_next_start(tiny_model_dir, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    overrides = tiny_run_overrides(tiny_model_dir, run_dir, "fl.rounds=3")
    proc = spawn_spearfl(log, "run", *_sets(overrides), own_group=True)
    wait_until(lambda: _reached(run_dir, 1) and _ray_is_up(proc), proc, log, 600, "round 1")
    family = process_family(proc.pid)
    proc.send_signal(signal.SIGKILL)  # the driver only, as the OOM killer would
    proc.wait(timeout=30)

    resume_log = tmp_path / "resume.log"
    resumed = spawn_spearfl(resume_log, "run", "--resume", str(run_dir))
    try:
        named = "left behind by a run that was killed: "
        wait_until(lambda: named in resume_log.read_text(), resumed, resume_log, 300, named)
        # the next start names what it stopped, and it is gone by then
        line = next(x for x in _lines(resume_log) if named in x)
        pids = [int(item.split()[0]) for item in line.split(named)[1].split(", ")]
        assert pids and set(pids) <= set(family) and still_running(pids) == []
        assert resumed.wait(timeout=600) == 0, resume_log.read_text()[-3000:]
    finally:
        if resumed.poll() is None:
            kill_tree(resumed)
    assert _all_gone(family) == []
    assert read_complete(run_dir)["rounds"] == 3
    _only_full_rounds(run_dir, 3)


def test_serve_beside_a_finished_run_and_one_ctrl_c_stops_it_all(tiny_model_dir, tmp_path, capsys):
    """``spearfl serve`` with the config of a finished run leaves that run byte for byte as it
    was; one Ctrl-C ends the page, the federation and Ray, and says how to resume."""
    run_dir = tmp_path / "demo"
    cfg_file = tmp_path / "demo.yaml"
    save_config(
        load_config(None, tiny_run_overrides(tiny_model_dir, run_dir, "fl.rounds=1")), cfg_file
    )
    assert main(["run", str(cfg_file)]) == 0
    before = file_hashes(run_dir)
    assert main(["serve", str(cfg_file), "--client-id", "0", "--output-dir", str(run_dir)]) == 2
    assert "already holds a run (complete (1 round))" in capsys.readouterr().err

    port, log = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}/"
    proc = spawn_spearfl(
        log, "serve", str(cfg_file), "--client-id", "0", "--port", str(port), own_group=True
    )
    try:
        wait_for_page(url, proc, log, timeout=600)
        waiting = "round 1: waiting for 'Start next round'"
        wait_until(lambda: waiting in log.read_text() and _ray_is_up(proc), proc, log, 600, waiting)
    finally:
        family = process_family(proc.pid)
        code = _stop(proc, signal.SIGINT, group=True)
    assert code == 128 + signal.SIGINT, log.read_text()[-3000:]
    assert any(name.startswith("ray::") for name in family.values())
    assert _all_gone(family) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "api/status", timeout=5)

    serve_dir = Path(f"{run_dir}-serve") / "client-0"
    resume = [line for line in _lines(log) if "resume" in line]
    assert resume == [
        f"interrupted by SIGINT: {serve_dir} stopped after round 0; resume with: spearfl serve "
        f"{cfg_file} --client-id 0 --output-dir {serve_dir} --resume"
    ]
    assert "Traceback" not in log.read_text()
    assert file_hashes(run_dir) == before  # the finished run: every file as it was
    assert load_config(serve_dir / "config.yaml").feedback.provider == "human"
    assert run_state(serve_dir).describe() == "interrupted after round 0 of 1"


def test_ctrl_c_in_the_second_run_of_a_compare_then_the_same_command_finishes(
    tiny_model_dir, tmp_path, capsys
):
    out, log = tmp_path / "cmp", tmp_path / "compare.log"
    overrides = [
        o
        for o in tiny_run_overrides(tiny_model_dir, out / "unused", "fl.rounds=4")
        if not o.startswith("output_dir=")
    ]
    args = ["compare", "--algorithms", "spear,grpo", "--output-dir", str(out), *_sets(overrides)]
    proc = spawn_spearfl(log, *args, own_group=True)
    try:
        wait_until(lambda: _reached(out / "grpo", 1), proc, log, 900, "grpo's round 1")
    finally:
        family = process_family(proc.pid)
        code = _stop(proc, signal.SIGINT, group=True)
    assert code == 128 + signal.SIGINT, log.read_text()[-3000:]
    assert _all_gone(family) == []
    done = checkpoint_round(out / "grpo")
    assert 1 <= done < 4
    resume = [line for line in _lines(log) if "resume" in line]
    assert resume == [
        f"interrupted by SIGINT: {out / 'grpo'} stopped after round {done}; resume with: the "
        "same spearfl compare command (complete runs are kept)"
    ]
    _only_full_rounds(out / "grpo", done)  # the round Ctrl-C cut into was not aggregated
    assert not (out / "grpo" / SUMMARY_FILE).exists()

    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"spear: {out / 'spear'}: complete (4 rounds)" in printed
    assert f"grpo: {out / 'grpo'}: interrupted after round {done} of 4" in printed
    assert f"grpo: resuming {out / 'grpo'}" in printed and "spear: running" not in printed
    spear, grpo = read_history(out / "spear"), read_history(out / "grpo")
    _only_full_rounds(out / "spear", 4)
    _only_full_rounds(out / "grpo", 4)
    assert [e["clients"] for e in spear] == [e["clients"] for e in grpo]
    assert read_complete(out / "grpo")["rounds"] == 4
    assert (out / "comparison.md").is_file()
