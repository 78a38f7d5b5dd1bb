"""TensorBoard event files and W&B from ``logging.report_to``, read back and checked."""

from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import tiny_run_overrides
from spearfl.config import load_config
from spearfl.reporting.live import (
    TENSORBOARD_DIR,
    TensorBoardObserver,
    report_observers,
    round_scalars,
)

ENTRY = {
    "round": 3,
    "clients": [0, 2],
    "client_metrics": {
        "0": {"wins": 3, "losses": 5, "y0_correct": 2, "num_rollouts": 8, "tokens_generated": 120,
              "rollout_seconds": 1.5, "train_seconds": 2.0, "lr": 0.01, "mean_loss": 1.25,
              "peak_rss_mb": 700.0, "rss_mb": 650.0, "client_id": 0.0, "client_pid": 4242.0,
              "trained": True},
        "2": {"wins": 1, "losses": 0, "y0_accuracy": 0.75, "num_rollouts": 4,
              "tokens_generated": 30, "rollout_seconds": 0.5, "train_seconds": 1.0, "lr": 0.01,
              "mean_loss": 0.75, "peak_rss_mb": 720.0, "rss_mb": 610.0, "client_id": 2.0},
    },
    "eval": {"accuracy": 0.375, "valid_rate": 0.5, "n": 16, "method": "option_text",
             "correct": [1, 0], "by_position": {"0": 0.5}, "seconds": 2.5},
    "seconds": 9.0,
    "server_rss_mb": 800.0,
    "server_rss_after_eval_mb": 812.5,
    "server_peak_rss_mb": 830.0,
}  # fmt: skip


def _scalars(log_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return events


def _series(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, pytest.approx(e.value)) for e in events.Scalars(tag)]


def test_round_scalars_per_round_and_per_client():
    scalars = round_scalars(ENTRY)
    assert {k: v for k, v in scalars.items() if not k.startswith("client_")} == {
        "eval/accuracy": 0.375,
        "eval/valid_rate": 0.5,
        "eval/n": 16.0,
        "eval/seconds": 2.5,
        "round/clients": 2.0,
        "round/wins": 4.0,
        "round/losses": 5.0,
        "round/tokens_generated": 150.0,
        "round/rollout_seconds": 2.0,
        "round/train_seconds": 3.0,
        "round/lr": 0.01,
        "round/mean_loss": 1.0,
        "round/peak_rss_mb": 720.0,
        "round/rss_mb": 650.0,
        "round/first_answer_accuracy": 5 / 12,  # 2 of 8, and 0.75 of 4
        "round/seconds": 9.0,
        "server/rss_mb": 800.0,
        "server/rss_after_eval_mb": 812.5,
        "server/peak_rss_mb": 830.0,
    }
    assert scalars["client_0/wins"] == 3.0 and scalars["client_2/y0_accuracy"] == 0.75
    assert scalars["client_0/peak_rss_mb"] == 700.0 and scalars["client_2/rss_mb"] == 610.0
    assert "client_0/client_id" not in scalars and "client_0/trained" not in scalars
    assert "client_0/client_pid" not in scalars


def test_a_resumed_run_does_not_repeat_steps(tmp_path):
    log_dir = tmp_path / TENSORBOARD_DIR
    first = TensorBoardObserver(log_dir)
    for r, acc in ((0, 0.1), (1, 0.2), (2, 0.3)):  # round 2 ran, then the process died
        first.round_done({"round": r, "eval": {"accuracy": acc}})
    first.close()
    resumed = TensorBoardObserver(log_dir)  # continues after the round-1 checkpoint
    for r, acc in ((2, 0.35), (3, 0.4)):
        resumed.round_done({"round": r, "eval": {"accuracy": acc}})
    resumed.close()
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 2
    assert _series(_scalars(log_dir), "eval/accuracy") == [(0, 0.1), (1, 0.2), (2, 0.35), (3, 0.4)]


def test_wandb_without_the_package_is_one_message_and_no_observer(tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    cfg = load_config(None, ["logging.report_to=wandb,tensorboard"])
    with caplog.at_level(logging.WARNING, logger="spearfl.reporting.live"):
        observers = report_observers(cfg, tmp_path)
    assert [type(o).__name__ for o in observers] == ["TensorBoardObserver"]
    (message,) = [r.getMessage() for r in caplog.records]
    assert message == (
        "logging.report_to lists wandb, but the wandb package is not installed "
        "(pip install wandb); going on without W&B"
    )


def test_wandb_without_a_key_is_left_out(tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", types.ModuleType("wandb"))
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from `wandb login`
    cfg = load_config(None, ["logging.report_to=wandb"])
    with caplog.at_level(logging.WARNING, logger="spearfl.reporting.live"):
        assert report_observers(cfg, tmp_path) == []
    assert "no W&B key is set (set WANDB_API_KEY or run `wandb login`)" in caplog.text


class FakeWandb(types.ModuleType):
    """Records what a W&B run would receive."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.inits: list[dict] = []
        self.logged: list[tuple[dict, int]] = []
        self.finished = 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        fake = self

        class Run:
            def log(self, data, step):
                fake.logged.append((data, step))

            def finish(self):
                fake.finished += 1

        return Run()


def test_wandb_logs_the_round_scalars_and_a_resume_continues_its_run(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_API_KEY", "test-key")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    run_dir = tmp_path / "runs" / "lambda-0.1"
    cfg = load_config(None, ["logging.report_to=wandb"])
    for _ in range(2):  # the run, then its resumption
        (observer,) = report_observers(cfg, run_dir)
        observer.round_done(ENTRY)
        observer.close()
    assert fake.logged == [(round_scalars(ENTRY), 3)] * 2 and fake.finished == 2
    first, second = fake.inits
    assert first["id"] == second["id"] and len(first["id"]) == 16
    assert (first["project"], first["name"], first["resume"]) == ("spearfl", "lambda-0.1", "allow")
    assert first["config"]["logging"] == {"report_to": ["wandb"]}


@pytest.mark.slow
def test_tensorboard_events_of_a_real_run_match_its_history(tiny_model_dir, tmp_path):
    """Two rounds through Flower's simulation; the event file read back holds the history."""
    from spearfl.federation.simulation import simulate

    run_dir = tmp_path / "run"
    overrides = tiny_run_overrides(tiny_model_dir, run_dir, "logging.report_to=tensorboard")
    simulate(load_config(None, overrides), run_dir)

    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [e["round"] for e in history] == [0, 1, 2]
    events = _scalars(run_dir / TENSORBOARD_DIR)
    for key in ("accuracy", "option_accuracy", "valid_rate"):
        assert _series(events, f"eval/{key}") == [(e["round"], e["eval"][key]) for e in history]
    trained = history[1:]
    assert _series(events, "round/tokens_generated") == [
        (e["round"], sum(m["tokens_generated"] for m in e["client_metrics"].values()))
        for e in trained
    ]
    for entry in trained:
        for client, metrics in entry["client_metrics"].items():
            for key in ("wins", "losses", "lr", "peak_rss_mb", "train_seconds"):
                values = dict(_series(events, f"client_{client}/{key}"))
                assert values[entry["round"]] == metrics[key], (client, key)

    # the per-question records of the same run: one 0/1 per eval question, ids once per run
    uids = json.loads((run_dir / "eval_questions.json").read_text())["uids"]
    assert len(uids) == 16 == len(set(uids))
    for entry in history:
        ev = entry["eval"]
        assert len(ev["correct"]) == len(ev["option_correct"]) == 16
        assert ev["accuracy"] == round(sum(ev["correct"]) / 16, 4)
        assert ev["option_accuracy"] == round(sum(ev["option_correct"]) / 16, 4)
