"""The same ServerApp/ClientApp on Flower's deployment engine: a SuperLink and SuperNodes as
separate processes on 127.0.0.1, driven by ``flwr run``, with and without TLS, with device
workers (the documented path) and without (Flower's plain path), and a SuperNode killed
mid-round."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from flower_cluster import LocalFederation, free_port, make_tls_files
from helpers import tiny_run_overrides
from spearfl.config import ConfigError, load_config, save_config
from spearfl.federation.checkpoint import load_checkpoint
from spearfl.federation.device_link import TICKET_FILE, read_ticket
from spearfl.federation.server import select_clients
from spearfl.federation.server_app import settings_from_run_config
from spearfl.reporting.history import read_history

REPO = Path(__file__).resolve().parents[1]


def test_run_config_names_the_config_run_dir_and_overrides(tmp_path):
    cfg_file = tmp_path / "exp.yaml"
    save_config(load_config(None, ["fl.rounds=3"]), cfg_file)
    cfg, run_dir, resume = settings_from_run_config(
        {"config": str(cfg_file), "run-dir": str(tmp_path / "r"), "overrides": "fl.rounds=5; "}
    )
    assert (cfg.fl.rounds, run_dir, resume) == (5, tmp_path / "r", False)
    earlier = tmp_path / "earlier"
    save_config(load_config(None, ["fl.rounds=7"]), earlier / "config.yaml")
    cfg, run_dir, resume = settings_from_run_config({"run-dir": str(earlier), "resume": True})
    assert (cfg.fl.rounds, run_dir, resume) == (7, earlier, True)  # the run's own config
    with pytest.raises(ConfigError, match="unknown run-config key 'rounds'"):
        settings_from_run_config({"rounds": 3})
    with pytest.raises(ConfigError, match="resume=true needs run-dir"):
        settings_from_run_config({"resume": True})
    with pytest.raises(ConfigError, match="fl.roundz"):
        settings_from_run_config({"overrides": "fl.roundz=2"})


def _write_run_config(tmp_path: Path, cfg_file: Path, run_dir: Path) -> Path:
    path = tmp_path / "run-config.toml"
    path.write_text(f'config = "{cfg_file}"\nrun-dir = "{run_dir}"\n')
    return path


def _deployment_config(model_dir: Path, tmp_path: Path, *extra: str) -> tuple[Path, Path]:
    run_dir = tmp_path / "run"
    cfg = load_config(None, tiny_run_overrides(model_dir, run_dir, "fl.round_timeout=120", *extra))
    cfg_file = tmp_path / "experiment.yaml"
    save_config(cfg, cfg_file)
    return cfg_file, run_dir


def _run_to_completion(fed: LocalFederation, tmp_path: Path, cfg_file: Path, run_dir: Path):
    run_id = fed.submit(REPO, _write_run_config(tmp_path, cfg_file, run_dir))
    status, details = fed.wait(run_id)
    assert status == "finished:completed", f"{status} {details}\n{fed.server_log(run_id)[-4000:]}"
    return run_id


def _check_run_dir(run_dir: Path, rounds: int) -> list[dict]:
    history = read_history(run_dir)
    assert [e["round"] for e in history] == list(range(rounds + 1))
    for entry in history[1:]:
        assert entry["clients"] == select_clients(3, 2, 42, entry["round"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == rounds
    assert (run_dir / "adapters" / "final" / "adapter_model.safetensors").is_file()
    assert load_checkpoint(run_dir).round_num == rounds
    return history


@pytest.mark.slow
def test_two_rounds_over_tls_on_a_superlink_and_three_supernodes(tiny_model_dir, tmp_path):
    """Deployment over TLS (the insecure path is the same code without certificates: the
    other deployment tests run it) gives what the simulation engine gives."""
    from spearfl.federation.simulation import simulate
    from spearfl.federation.worker import forget_policy

    tls = make_tls_files(tmp_path / "certs")
    cfg_file, run_dir = _deployment_config(tiny_model_dir, tmp_path)
    fed = LocalFederation(tmp_path / "federation", num_nodes=3, tls=tls, worker_config=cfg_file)
    with fed:
        _run_to_completion(fed, tmp_path, cfg_file, run_dir)
        assert "https://127.0.0.1" in fed.log("superlink")
        worker_pids = {i: read_ticket(fed.ticket(i)).pid for i in range(3)}
    deployed = _check_run_dir(run_dir, 2)
    # Every update came from the node's worker, where the model stayed loaded between rounds.
    for entry in deployed[1:]:
        for cid, m in entry["client_metrics"].items():
            assert m["client_pid"] == worker_pids[int(cid)]
            assert m["client_ready_seconds"] < 1.0, m["client_ready_seconds"]

    # The simulation engine, same config and seed: the same clients, the same updates.
    sim_dir = tmp_path / "simulated"
    forget_policy()
    simulate(load_config(cfg_file, [f"output_dir={sim_dir}"]), sim_dir)
    simulated = read_history(sim_dir)
    assert [e["clients"] for e in simulated] == [e["clients"] for e in deployed]
    for a, b in zip(deployed[1:], simulated[1:]):
        for cid, m in a["client_metrics"].items():
            assert m["wins"] == b["client_metrics"][cid]["wins"]
            assert m["tokens_generated"] == b["client_metrics"][cid]["tokens_generated"]
    want, got = load_checkpoint(sim_dir).adapter, load_checkpoint(run_dir).adapter
    assert all(torch.allclose(want[k], got[k], atol=1e-5) for k in want)


@pytest.mark.slow
def test_a_supernode_killed_in_round_2_of_3(tiny_model_dir, tmp_path):
    victim = select_clients(3, 2, 42, 2)[0]
    cfg_file, run_dir = _deployment_config(
        tiny_model_dir, tmp_path, "fl.rounds=3", "fl.round_timeout=90"
    )
    with LocalFederation(tmp_path / "federation", num_nodes=3) as fed:
        run_id = fed.submit(REPO, _write_run_config(tmp_path, cfg_file, run_dir))
        deadline = time.monotonic() + 600
        while not [e for e in _history(run_dir) if e["round"] == 1]:
            assert time.monotonic() < deadline, fed.server_log(run_id)[-3000:]
            time.sleep(0.2)
        fed.kill(f"supernode{victim}")  # SIGKILL while round 2's messages are out
        status, details = fed.wait(run_id)
        assert status == "finished:completed", f"{details}\n{fed.server_log(run_id)[-4000:]}"
    history = read_history(run_dir)
    assert [e["round"] for e in history] == [0, 1, 2, 3]
    two = history[2]
    survivors = [c for c in select_clients(3, 2, 42, 2) if c != victim]
    assert two["clients"] == survivors
    assert [f["client_id"] for f in two["failures"]] == [victim]
    assert two["failures"][0]["reason"]
    three = history[3]
    assert victim in select_clients(3, 2, 42, 3)  # drawn again: it fails again, not silently
    assert victim not in three["clients"] and three["failures"][0]["client_id"] == victim
    assert json.loads((run_dir / "summary.json").read_text())["rounds_completed"] == 3
    # Flower's plain path (no worker): a fresh ClientApp process for every message.
    pids = [m["client_pid"] for e in history[1:] for m in e["client_metrics"].values()]
    assert len(pids) == 4 and len(set(pids)) == 4


def _history(run_dir: Path) -> list[dict]:
    return read_history(run_dir) if (run_dir / "history.jsonl").exists() else []


@pytest.mark.slow
def test_a_device_page_feeding_a_real_federation(tiny_model_dir, tmp_path):
    """``spearfl serve --superlink``: the page and the device's SuperNode; a person's verdicts on
    the page become that client's wins and losses in a round run with ``flwr run``."""
    import httpx

    from helpers import device_overrides, spawn_spearfl, wait_for_page
    from spearfl.feedback.store import FeedbackStore

    run_dir = tmp_path / "run"
    cfg = load_config(
        None,
        [
            *device_overrides(tiny_model_dir, run_dir),
            "fl.rounds=1",
            "fl.local_train_steps=2",
            "optim.batch_size=2",
            "optim.lr=0.01",
            "data.eval_every=1",
            "fl.round_timeout=300",
        ],
    )
    cfg_file = tmp_path / "experiment.yaml"
    save_config(cfg, cfg_file)
    device_dir, port = tmp_path / "device-0", free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "serve.log"

    def device(fed: LocalFederation):
        return spawn_spearfl(
            log, "serve", str(cfg_file), "--client-id", "0", "--port", str(port),
            "--device-dir", str(device_dir), "--superlink", f"127.0.0.1:{fed.link_port}",
            "--node-port", str(free_port()),
        )  # fmt: skip

    fed = LocalFederation(
        tmp_path / "federation", num_nodes=2, external={0: device}, worker_config=cfg_file
    )
    with fed:
        wait_for_page(url, fed.procs["supernode0"], log)
        verdicts = ["right", "wrong", "right"]
        for i, verdict in enumerate(verdicts):
            item = httpx.post(url + "api/ask", json={"request_id": f"device-0-{i:03d}",
                              "question": f"Name a fruit ({i})"}, timeout=60).json()  # fmt: skip
            body = (
                {"verdict": verdict, "hint": "it grows on trees"}
                if verdict == "wrong"
                else {"verdict": verdict}
            )
            judged = httpx.post(url + f"api/interactions/{item['id']}/verdict", json=body,
                                timeout=60).json()  # fmt: skip
            if verdict == "wrong":
                assert judged["revision"] is not None
        assert httpx.get(url + "api/status", timeout=10).json()["waiting_for_training"] == 3
        _run_to_completion(fed, tmp_path, cfg_file, run_dir)
        assert httpx.get(url + "api/status", timeout=10).json()["waiting_for_training"] == 0
        serve_worker = read_ticket(device_dir / TICKET_FILE).pid  # serve started it
        node1_worker = read_ticket(fed.ticket(1)).pid

    metrics = read_history(run_dir)[1]["client_metrics"]
    assert (metrics["0"]["client_pid"], metrics["1"]["client_pid"]) == (serve_worker, node1_worker)
    assert (metrics["0"]["wins"], metrics["0"]["losses"], metrics["0"]["n_eff"]) == (2, 1, 2.0)
    assert metrics["1"]["n_eff"] == 0.0  # a device nobody gave feedback to
    store = FeedbackStore.for_device(device_dir)
    assert {r.used_in_round for r in store.recent()} == {1}
    assert load_checkpoint(device_dir).round_num == 0  # the adapter the device received
