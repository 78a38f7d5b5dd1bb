"""``spearfl worker``: one process keeps the tiny model loaded and trains the train messages that
fresh ClientApp processes (as Flower's deployment engine starts one per message) forward to it."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import spawn_spearfl, tiny_run_overrides, wait_until
from spearfl.config import load_config, save_config
from spearfl.federation.device_link import WorkerUnavailable, read_ticket

pytestmark = pytest.mark.slow

REQUESTS = [{"round": 1, "client": 0}, {"round": 2, "client": 1}]

# A fresh ClientApp process: the real ClientApp's train() on each request, as the deployment
# engine's flwr-clientapp would call it; it reports the replies and whether it imported torch.
CLIENTAPP = """
import json, sys, time
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict
from spearfl.federation import client_app

spec = json.loads(open(sys.argv[1]).read())
arrays = np.load(sys.argv[2])
out = {"metrics": [], "pid": __import__("os").getpid()}
for i, req in enumerate(spec["requests"]):
    content = RecordDict({
        client_app.ADAPTER: ArrayRecord({k: Array(arrays[k]) for k in spec["keys"]}),
        client_app.CONFIG: ConfigRecord({"json": spec["json"], "round": req["round"]}),
    })
    meta = Metadata(run_id=1, message_id=f"m{i}", src_node_id=0, dst_node_id=1,
                    reply_to_message_id="", group_id="", created_at=time.time(), ttl=600.0,
                    message_type="train")
    node = {"partition-id": req["client"], "num-partitions": 3, **spec["node"]}
    reply = client_app.train(Message(content=content, metadata=meta),
                             Context(1, 1, node, RecordDict(), {}))
    np.savez(f"{sys.argv[3]}-{i}.npz",
             **{k: a.numpy() for k, a in reply.content[client_app.ADAPTER].items()})
    out["metrics"].append(dict(reply.content[client_app.METRICS]))
out["torch_imported"] = "torch" in sys.modules
open(sys.argv[3] + ".json", "w").write(json.dumps(out))
"""


def _start_worker(cfg_file: Path, ticket: Path, log: Path) -> subprocess.Popen:
    proc = spawn_spearfl(log, "worker", "--ticket", str(ticket), str(cfg_file))
    wait_until(ticket.is_file, proc, log, timeout=300, what="the worker's ticket")
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def setting(tiny_model_dir, tmp_path_factory):
    """The run's config file and JSON, and the initial adapter (what round 1 sends)."""
    from spearfl.federation.worker import shared_policy

    folder = tmp_path_factory.mktemp("device-worker")
    # OPSD trains on every answer: the tiny random model wins nothing for SPEAR to train on.
    cfg = load_config(
        None, tiny_run_overrides(tiny_model_dir, folder / "run", "algorithm.name=opsd")
    )
    cfg_file = folder / "experiment.yaml"
    save_config(cfg, cfg_file)
    adapter = {k: v.detach().cpu().numpy() for k, v in shared_policy(cfg).get_adapter().items()}
    np.savez(folder / "adapter.npz", **adapter)
    return {"folder": folder, "cfg_file": cfg_file, "json": cfg.to_json(), "keys": list(adapter)}


@pytest.fixture(scope="module")
def worker(setting):
    folder = setting["folder"]
    ticket = folder / "device" / "worker.ticket"
    proc = _start_worker(setting["cfg_file"], ticket, folder / "worker.log")
    yield proc, ticket
    _stop(proc)


def _clientapp_process(setting, name: str, node: dict, requests=REQUESTS) -> dict:
    """Run the requests in a fresh ClientApp process; its metrics and adapters."""
    folder = setting["folder"]
    spec = {"json": setting["json"], "keys": setting["keys"], "requests": requests, "node": node}
    spec_file = folder / f"{name}.spec.json"
    spec_file.write_text(json.dumps(spec))
    out = folder / name
    done = subprocess.run(
        [sys.executable, "-c", CLIENTAPP, str(spec_file), str(folder / "adapter.npz"), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(Path(f"{out}.json").read_text())
    result["adapters"] = [dict(np.load(f"{out}-{i}.npz")) for i in range(len(requests))]
    return result


def _message(setting, round_num: int):
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, RecordDict

    from spearfl.federation import client_app

    arrays = np.load(setting["folder"] / "adapter.npz")
    content = RecordDict(
        {
            client_app.ADAPTER: ArrayRecord({k: Array(arrays[k]) for k in setting["keys"]}),
            client_app.CONFIG: ConfigRecord({"json": setting["json"], "round": round_num}),
        }
    )
    meta = Metadata(
        run_id=1,
        message_id="m",
        src_node_id=0,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=600.0,
        message_type="train",
    )
    return Message(content=content, metadata=meta)


def _delegate(setting, ticket: Path, client_id: int = 0):
    """The ClientApp's train() in this process, delegating to the ticket's worker."""
    from flwr.app import Context, RecordDict

    from spearfl.federation import client_app

    node = {
        "partition-id": client_id,
        "num-partitions": 3,
        "worker": str(ticket),
        "device-dir": str(setting["folder"] / "device"),
    }
    return client_app.train(_message(setting, 1), Context(1, 1, node, RecordDict(), {}))


def test_one_worker_process_trains_what_a_fresh_clientapp_would(setting, worker):
    proc, ticket = worker
    assert stat.S_IMODE(os.stat(ticket).st_mode) == 0o600
    assert read_ticket(ticket).pid == proc.pid
    device_dir = str(setting["folder"] / "device")
    delegated = _clientapp_process(
        setting, "delegated", {"worker": str(ticket), "device-dir": device_dir}
    )
    plain = _clientapp_process(setting, "plain", {"device-dir": device_dir})

    assert delegated["torch_imported"] is False  # the per-message process stays light
    assert plain["torch_imported"] is True
    assert [m["client_pid"] for m in delegated["metrics"]] == [proc.pid, proc.pid]
    assert [m["client_pid"] for m in plain["metrics"]] == [plain["pid"], plain["pid"]]
    cold = plain["metrics"][0]["client_ready_seconds"]  # torch, the model and the data loaded
    for m in delegated["metrics"]:
        assert m["client_ready_seconds"] < cold / 5, (m["client_ready_seconds"], cold)
    for d, p in zip(delegated["metrics"], plain["metrics"]):
        assert (d["wins"], d["tokens_generated"], d["n_eff"]) == (
            p["wins"],
            p["tokens_generated"],
            p["n_eff"],
        )
    for got, want in zip(delegated["adapters"], plain["adapters"]):
        assert list(got) == list(want) == setting["keys"]
        assert all(torch.equal(torch.from_numpy(got[k]), torch.from_numpy(want[k])) for k in got)
    assert [m["steps"] for m in delegated["metrics"]] == [2.0, 2.0]  # it trained: it moved
    start = {k: np.load(setting["folder"] / "adapter.npz")[k] for k in setting["keys"]}
    assert any(not np.array_equal(delegated["adapters"][0][k], start[k]) for k in start)


def test_a_connection_without_the_tickets_key_is_refused(setting, worker):
    proc, ticket = worker
    address = read_ticket(ticket).address
    with pytest.raises(AuthenticationError):
        Client(address, authkey=b"not the ticket's key, 32 bytes!")
    reply = _delegate(setting, ticket)  # the worker goes on serving
    assert reply.content["metrics"]["client_pid"] == proc.pid
    assert proc.poll() is None


def test_a_stopped_or_dead_worker_gives_a_clear_error(setting, tmp_path):
    ticket = tmp_path / "worker.ticket"
    proc = _start_worker(setting["cfg_file"], ticket, tmp_path / "worker.log")
    try:
        kept = ticket.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        assert not ticket.exists()  # removed on a clean stop
        with pytest.raises(WorkerUnavailable, match="does not exist") as missing:
            _delegate(setting, ticket)
        assert str(ticket) in str(missing.value) and "spearfl worker --ticket" in str(missing.value)

        # What a worker killed with SIGKILL leaves behind: a ticket nobody answers.
        ticket.write_text(kept)
        with pytest.raises(WorkerUnavailable, match=f"pid {proc.pid}.*did not answer") as dead:
            _delegate(setting, ticket)
        assert str(ticket) in str(dead.value) and "spearfl worker --ticket" in str(dead.value)
    finally:
        _stop(proc)
