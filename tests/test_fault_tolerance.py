"""The server under failing, misbehaving and interrupted clients, with real tiny-model updates.

The server runs in this process and reaches its clients through a ``send`` function that runs
the real client update (``ClientWorker``) in-process, so failures can be placed exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from helpers import Crash, local_send, tiny_run_overrides
from spearfl.config import load_config
from spearfl.federation.checkpoint import CHECKPOINT_FILE, load_checkpoint
from spearfl.federation.server import (
    FederatedServer,
    RoundFailed,
    replacement_clients,
    select_clients,
)
from spearfl.federation.validation import rejection_reason, update_norm
from spearfl.federation.worker import forget_policy
from spearfl.reporting.history import read_history

pytestmark = pytest.mark.slow


def _server(model_dir: Path, run_dir: Path, *extra: str) -> FederatedServer:
    forget_policy()  # every server starts from the same freshly initialised adapter
    cfg = load_config(None, tiny_run_overrides(model_dir, run_dir, "data.eval_every=2", *extra))
    return FederatedServer(cfg, run_dir)


def test_update_checks_by_hand():
    glob = {"a": torch.zeros(2, 2), "b": torch.ones(3)}
    good = {"a": torch.full((2, 2), 0.5), "b": torch.ones(3)}
    assert rejection_reason(glob, good, 4.0) is None
    assert update_norm(glob, good) == pytest.approx(1.0)  # sqrt(4 * 0.25)
    assert rejection_reason(glob, good, 4.0, max_update_norm=0.9).startswith("update norm 1")
    assert rejection_reason(glob, good, 0.0) is None  # nothing to learn from: weight 0, kept
    assert "n_eff is -1.0" in rejection_reason(glob, good, -1.0)
    assert "n_eff is nan" in rejection_reason(glob, good, math.nan)
    assert "not a number" in rejection_reason(glob, good, "7")
    assert "missing tensor 'b'" in rejection_reason(glob, {"a": good["a"]}, 1.0)
    assert "unexpected tensor 'c'" in rejection_reason(glob, {**good, "c": torch.ones(1)}, 1.0)
    wrong_shape = {**good, "b": torch.ones(4)}
    assert rejection_reason(glob, wrong_shape, 1.0) == "tensor 'b' has shape (4,), expected (3,)"
    half = {**good, "b": torch.ones(3, dtype=torch.float16)}
    assert "dtype torch.float16" in rejection_reason(glob, half, 1.0)
    inf = {**good, "b": torch.tensor([1.0, math.inf, math.nan])}
    assert rejection_reason(glob, inf, 1.0) == "tensor 'b' has 2 non-finite value(s)"


def test_replacements_are_untried_clients_and_seeded():
    first = replacement_clients(8, [1, 5], 3, seed=42, round_num=3, attempt=1)
    assert first == replacement_clients(8, [5, 1], 3, seed=42, round_num=3, attempt=1)
    assert len(first) == 3 and not set(first) & {1, 5}
    assert replacement_clients(3, [0, 1, 2], 2, 42, 1, 1) == []  # nobody left to ask


def test_bad_updates_are_rejected_and_logged_and_the_adapter_stays_finite(
    tiny_model_dir, tmp_path, caplog
):
    run_dir = tmp_path / "run"
    server = _server(tiny_model_dir, run_dir, "fl.clients_per_round=3")
    faults = {(1, 0): "nan", (1, 1): "shape", (2, 2): "neg_weight"}
    with caplog.at_level("WARNING"):
        server.run(local_send(server.cfg, faults))
    history = read_history(run_dir)
    one, two = history[1], history[2]
    assert one["clients"] == [2] and one["aggregated"] == 1
    rejected = {r["client_id"]: r["reason"] for r in one["rejected"]}
    assert rejected[0].endswith("non-finite value(s)") and "has 1 non-finite" in rejected[0]
    assert "has shape" in rejected[1] and "expected" in rejected[1]
    assert two["clients"] == [0, 1]
    [neg] = two["rejected"]
    assert (neg["client_id"], neg["attempt"]) == (2, 0) and "n_eff is -3.0" in neg["reason"]
    logged = caplog.text
    assert "update of client 0 rejected" in logged and "update of client 1 rejected" in logged
    assert all(bool(torch.isfinite(t).all()) for t in server.global_adapter.values())


def test_failed_client_is_recorded_and_the_round_retried_with_another(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    server = _server(tiny_model_dir, run_dir, "fl.min_clients=2")
    chosen = select_clients(3, 2, 42, 2)
    failing = chosen[0]
    sends: list = []
    server.run(local_send(server.cfg, {(2, failing): "raise"}, log=sends))
    entry = read_history(run_dir)[2]
    stand_in = replacement_clients(3, chosen, 1, 42, 2, 1)
    assert sends == [(1, select_clients(3, 2, 42, 1)), (2, chosen), (2, stand_in)]
    assert entry["clients"] == sorted([chosen[1], *stand_in])
    assert entry["failures"] == [
        {"client_id": failing, "reason": "error: ClientApp raised RuntimeError", "attempt": 0}
    ]
    assert entry["attempts"] == 2 and entry["aggregated"] == 2


def test_too_few_clients_fails_the_round_with_a_clear_message(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    server = _server(tiny_model_dir, run_dir, "fl.min_clients=2", "fl.max_round_retries=1")
    faults = {(1, c): "raise" for c in range(3)}
    with pytest.raises(RoundFailed, match="after 2 attempt.*fl.min_clients = 2.*--resume"):
        server.run(local_send(server.cfg, faults))
    assert load_checkpoint(run_dir).round_num == 0  # round 0 survives for a resume


def test_resume_after_a_crash_repeats_the_uninterrupted_run(tiny_model_dir, tmp_path):
    extra = ("fl.rounds=4", "fl.aggregation=fedadam", "fl.server_lr=0.05")
    straight = _server(tiny_model_dir, tmp_path / "straight", *extra)
    straight_sends: list = []
    straight.run(local_send(straight.cfg, log=straight_sends))

    crashed = _server(tiny_model_dir, tmp_path / "crashed", *extra)
    with pytest.raises(Crash):
        crashed.run(local_send(crashed.cfg, crash_at=3))
    ckpt = load_checkpoint(tmp_path / "crashed")
    assert ckpt.round_num == 2 and ckpt.optimizer["step"] == 2
    assert [e["round"] for e in read_history(tmp_path / "crashed")] == [0, 1, 2]

    resumed = _server(tiny_model_dir, tmp_path / "crashed", *extra)  # a fresh server process
    resumed_sends: list = []
    summary = resumed.run(local_send(resumed.cfg, log=resumed_sends), resume=True)
    assert resumed_sends == straight_sends[2:]  # rounds 3-4: the same clients
    assert summary["rounds_completed"] == 4
    for key, tensor in straight.global_adapter.items():
        assert torch.equal(tensor, resumed.global_adapter[key]), key
    a, b = read_history(tmp_path / "straight"), read_history(tmp_path / "crashed")
    assert [e["clients"] for e in a] == [e["clients"] for e in b]
    for x, y in zip(a, b):  # every client metric except wall-clock seconds repeats exactly
        for cid, m in x["client_metrics"].items():
            other = y["client_metrics"][cid]
            assert {k: v for k, v in m.items() if "seconds" not in k} == {
                k: v for k, v in other.items() if "seconds" not in k
            }
    assert (tmp_path / "crashed" / CHECKPOINT_FILE).is_file()
