"""Failures through Flower itself: misbehaving ClientApps on the simulation engine, and a
server process killed with SIGKILL and resumed from its run directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import kill_tree, tiny_run_overrides
from spearfl.config import load_config
from spearfl.federation.checkpoint import load_checkpoint
from spearfl.federation.server import select_clients
from spearfl.reporting.history import read_history

pytestmark = pytest.mark.slow

FAILING_IN_ROUND_2 = select_clients(3, 3, 42, 2)[2]


def _faulty_client_app():
    """The real ClientApp, except: in round 1 client 0 sends NaN and client 1 a wrong shape;
    in round 2 one client raises."""
    from flwr.app import ArrayRecord
    from flwr.clientapp import ClientApp

    from spearfl.federation import client_app as real

    app = ClientApp()

    @app.query()
    def identify(msg, context):
        return real.identify(msg, context)

    @app.train()
    def train(msg, context):
        cid = real.client_id_of(context)
        round_num = int(msg.content[real.CONFIG]["round"])
        if (round_num, cid) == (2, FAILING_IN_ROUND_2):
            raise RuntimeError("injected client crash")
        reply = real.train(msg, context)
        state = dict(reply.content[real.ADAPTER].to_torch_state_dict())
        first = sorted(state)[0]
        if (round_num, cid) == (1, 0):
            state[first] = state[first].clone()
            state[first].view(-1)[0] = float("nan")
        elif (round_num, cid) == (1, 1):
            state[first] = torch.zeros(state[first].shape[0] + 1, *state[first].shape[1:])
        reply.content[real.ADAPTER] = ArrayRecord(state)
        return reply

    return app


def test_nan_wrong_shape_and_crashing_clients_through_flower(tiny_model_dir, tmp_path):
    from ray import cloudpickle

    from spearfl.federation.simulation import simulate

    # Ray ships the ClientApp to its workers; this module is not importable there.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    run_dir = tmp_path / "run"
    cfg = load_config(
        None,
        tiny_run_overrides(
            tiny_model_dir, run_dir, "fl.clients_per_round=3", "fl.num_cpus_per_client=1"
        ),
    )
    summary = simulate(cfg, run_dir, client_app=_faulty_client_app())
    assert summary["rounds_completed"] == 2
    one, two = read_history(run_dir)[1:]
    assert one["clients"] == [2] and one["aggregated"] == 1
    reasons = {r["client_id"]: r["reason"] for r in one["rejected"]}
    assert "non-finite" in reasons[0] and "has shape" in reasons[1]
    survivors = sorted(set(range(3)) - {FAILING_IN_ROUND_2})
    assert two["clients"] == survivors and two["rejected"] == []
    [failure] = two["failures"]
    assert failure["client_id"] == FAILING_IN_ROUND_2
    assert "injected client crash" in failure["reason"]
    final = load_checkpoint(run_dir).adapter
    assert all(bool(torch.isfinite(t).all()) for t in final.values())


def _spearfl(*args: str) -> list[str]:
    return [sys.executable, "-m", "spearfl.cli.main", *args]


def test_server_killed_after_round_2_resumes_to_the_same_result(tiny_model_dir, tmp_path):
    from spearfl.federation.simulation import simulate
    from spearfl.federation.worker import forget_policy

    extra = ("fl.rounds=4", "fl.aggregation=fedadam", "fl.server_lr=0.05", "data.eval_every=2")
    straight_dir = tmp_path / "straight"
    forget_policy()
    straight_cfg = load_config(None, tiny_run_overrides(tiny_model_dir, straight_dir, *extra))
    simulate(straight_cfg, straight_dir)

    run_dir = tmp_path / "killed"
    sets = [a for o in tiny_run_overrides(tiny_model_dir, run_dir, *extra) for a in ("--set", o)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "killed.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(_spearfl("run", *sets), stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 600
    try:
        while True:
            ckpt = load_checkpoint(run_dir) if (run_dir / "config.yaml").exists() else None
            if ckpt is not None and ckpt.round_num >= 2:
                break
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "round 2 never finished"
            time.sleep(0.05)
    finally:
        kill_tree(proc)
    assert load_checkpoint(run_dir).round_num == 2
    assert not (run_dir / "summary.json").exists()

    resumed = subprocess.run(
        _spearfl("run", "--resume", str(run_dir)),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming {run_dir} after round 2 of 4" in resumed.stdout

    a, b = read_history(straight_dir), read_history(run_dir)
    assert [e["round"] for e in b] == [0, 1, 2, 3, 4]
    assert [e["clients"] for e in a] == [e["clients"] for e in b]
    assert [e["clients"] for e in b[3:]] == [select_clients(3, 2, 42, r) for r in (3, 4)]
    want, got = load_checkpoint(straight_dir).adapter, load_checkpoint(run_dir).adapter
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert Path(run_dir / "adapters" / "final" / "adapter_model.safetensors").is_file()
