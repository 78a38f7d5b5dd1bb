"""A run folder belongs to one run; finished means finished; resume means the same run."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

import spearfl.federation.simulation as simulation
from helpers import file_hashes, local_send, tiny_run_overrides
from spearfl.cli.main import main
from spearfl.config import load_config, save_config
from spearfl.federation.checkpoint import Checkpoint, checkpoint_round, save_checkpoint
from spearfl.federation.interrupt import RunInterrupted
from spearfl.federation.server import FederatedServer, RunFolderTaken
from spearfl.federation.worker import forget_policy
from spearfl.reporting.history import COMPLETE_FILE, SUMMARY_FILE, read_complete, read_history
from spearfl.reporting.run_folder import run_state, set_aside


def _checkpoint(run_dir: Path, round_num: int) -> None:
    save_checkpoint(run_dir, Checkpoint(round_num=round_num, adapter={"w": torch.zeros(2)}))


def test_run_state_names_what_a_folder_holds(tmp_path):
    run = tmp_path / "run"
    assert run_state(run).describe() == "absent"
    save_config(load_config(None, ["fl.rounds=4"]), run / "config.yaml")
    assert run_state(run).describe() == "interrupted before its first checkpoint"
    _checkpoint(run, 2)
    state = run_state(run)
    assert (state.status, state.last_round, state.rounds) == ("interrupted", 2, 4)
    assert state.describe() == "interrupted after round 2 of 4"
    (run / SUMMARY_FILE).write_text("{}")  # a summary alone does not make a run finished
    assert run_state(run).status == "interrupted"
    (run / COMPLETE_FILE).write_text('{"complete": tru')  # a torn marker is no marker
    assert run_state(run).status == "interrupted"
    (run / COMPLETE_FILE).write_text('{"complete": true, "rounds": 4}')
    assert run_state(run).describe() == "complete (4 rounds)"

    only_adapters = tmp_path / "other"
    (only_adapters / "adapters" / "round_0000").mkdir(parents=True)
    assert run_state(only_adapters).status == "interrupted"
    first = set_aside(only_adapters)
    (only_adapters / "adapters").mkdir(parents=True)
    second = set_aside(only_adapters)
    assert first.name.startswith("other.old-") and (first / "adapters" / "round_0000").is_dir()
    assert second != first and second.is_dir() and not only_adapters.exists()


@pytest.fixture
def fake_simulate(monkeypatch) -> list[tuple[Path, bool]]:
    """The CLI's simulation replaced by one that records its calls and writes a config."""
    calls: list[tuple[Path, bool]] = []

    def simulate(cfg, run_dir, observer=None, *, resume=False, **_):
        calls.append((Path(run_dir), resume))
        save_config(cfg, Path(run_dir) / "config.yaml")
        return {"rounds_completed": cfg.fl.rounds}

    monkeypatch.setattr(simulation, "simulate", simulate)
    return calls


def test_run_refuses_a_folder_holding_a_run_or_moves_it_aside(tmp_path, capsys, fake_simulate):
    out = tmp_path / "run"
    (out / "adapters" / "round_0000").mkdir(parents=True)  # all that is left of a run
    (out / "adapters" / "round_0000" / "adapter_model.safetensors").write_bytes(b"weights")
    assert main(["run", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run (interrupted before its first checkpoint)" in err
    assert f"spearfl run --resume {out}" in err and "--overwrite" in err
    assert fake_simulate == [] and (out / "adapters" / "round_0000").is_dir()

    assert main(["run", "--output-dir", str(out), "--overwrite"]) == 0
    printed = capsys.readouterr().out
    [moved] = tmp_path.glob("run.old-*")
    assert f"moved the earlier run in {out} aside to {moved}" in printed
    assert (moved / "adapters" / "round_0000" / "adapter_model.safetensors").read_bytes() == (
        b"weights"
    )
    assert fake_simulate == [(out, False)]
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]  # nothing of the old run


def test_extend_rounds_needs_resume(tmp_path, capsys, fake_simulate):
    assert main(["run", "--extend-rounds", "2", "--output-dir", str(tmp_path / "r")]) == 2
    assert "--extend-rounds N extends a run: use it with --resume" in capsys.readouterr().err
    assert fake_simulate == []


@pytest.mark.slow
def test_a_stop_during_a_round_drops_that_round_and_resume_redoes_it(tiny_model_dir, tmp_path):
    """A Ctrl-C in round 2 kills one client's actor: what arrived of the round is not
    aggregated, evaluated or recorded; the checkpoint stays at round 1."""
    run_dir = tmp_path / "run"
    forget_policy()
    cfg = load_config(None, tiny_run_overrides(tiny_model_dir, run_dir, "fl.rounds=3"))
    stop = threading.Event()
    real = local_send(cfg)

    def send(round_num, clients, adapter):
        delivery = real(round_num, clients, adapter)
        if round_num == 2:  # the signal arrives; the second client's reply is lost with it
            stop.set()
            delivery.replies = delivery.replies[:1]
        return delivery

    with pytest.raises(RunInterrupted) as stopped:
        FederatedServer(cfg, run_dir, stop=stop).run(send)
    assert stopped.value.last_round == 1
    assert "stopped after round 1; resume with: spearfl run --resume" in str(stopped.value)
    assert checkpoint_round(run_dir) == 1
    assert [e["round"] for e in read_history(run_dir)] == [0, 1]
    assert not (run_dir / SUMMARY_FILE).exists() and read_complete(run_dir) is None
    assert not (run_dir / "adapters" / "round_0002").exists()

    with pytest.raises(RunFolderTaken, match="already holds a run"):
        FederatedServer(cfg, run_dir).run(local_send(cfg))  # a fresh start would mix two runs

    summary = FederatedServer(cfg, run_dir).run(local_send(cfg), resume=True)
    history = read_history(run_dir)
    assert [e["round"] for e in history] == [0, 1, 2, 3]
    assert all(len(e["clients"]) == 2 for e in history[1:])
    assert summary["rounds_completed"] == 3
    marker = read_complete(run_dir)
    assert (marker["rounds"], marker["clients_per_round"]) == (3, 2)


@pytest.mark.slow
def test_resume_continues_the_same_run_or_says_it_is_finished(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    run_dir = tmp_path / "run"
    forget_policy()
    sets = tiny_run_overrides(tiny_model_dir, run_dir, "data.max_eval_examples=8")
    assert main(["run", *(a for s in sets for a in ("--set", s))]) == 0
    assert read_complete(run_dir)["rounds"] == 2
    before = file_hashes(run_dir)
    capsys.readouterr()

    assert main(["run", "--resume", str(run_dir), "--set", "fl.rounds=5"]) == 2
    err = capsys.readouterr().err
    assert "--set cannot change fl.rounds (to add rounds: --extend-rounds N)" in err
    assert "fl.round_timeout" in err  # the keys that may change are listed
    assert main(["run", "--resume", str(run_dir), "--set", "optim.lr=0.5"]) == 2
    assert "cannot change optim.lr" in capsys.readouterr().err

    ran: list = []
    monkeypatch.setattr(simulation, "simulate", lambda *a, **k: ran.append(a))
    for extra in ([], ["--set", "fl.round_timeout=60"]):
        assert main(["run", "--resume", str(run_dir), *extra]) == 0
        assert f"{run_dir} is complete (2 rounds); nothing to do" in capsys.readouterr().out
    assert ran == [] and file_hashes(run_dir) == before  # no work, not a byte rewritten
    monkeypatch.undo()

    assert main(["run", "--resume", str(run_dir), "--extend-rounds", "1"]) == 0
    assert "resuming with fl.rounds = 3 (was 2): 1 more" in capsys.readouterr().out
    assert load_config(run_dir / "config.yaml").fl.rounds == 3
    history = read_history(run_dir)
    assert [e["round"] for e in history] == [0, 1, 2, 3]
    assert [e["eval"]["n"] for e in history] == [8, 8, 8, 8]  # data.max_eval_examples
    assert read_complete(run_dir)["rounds"] == 3
    assert json.loads((run_dir / SUMMARY_FILE).read_text())["rounds_completed"] == 3
