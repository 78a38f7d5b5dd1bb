"""``benchmarks/round_cost.py`` carries each round's aggregate into the next: its client updates
are those of a real ``spearfl run`` (Flower simulation) of the same config, round 2 included."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from spearfl.config import load_config

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "round_cost.py"
SAME = ("wins", "losses", "tokens_generated", "num_rollouts", "n_eff")


def _round_cost():
    spec = importlib.util.spec_from_file_location("round_cost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["round_cost"] = module
    spec.loader.exec_module(module)
    return module


def test_round_two_figures_equal_a_real_runs(tmp_path):
    from spearfl.federation.simulation import simulate
    from spearfl.federation.worker import forget_policy

    run_dir = tmp_path / "run"
    cfg = load_config(
        None,
        [
            "data.num_clients=3",
            "data.num_train_examples=120",
            "data.num_eval_examples=8",
            "data.min_examples_per_client=5",
            "data.eval_every=0",
            "fl.rounds=2",
            "fl.clients_per_round=2",
            "fl.local_rollout_steps=6",
            "fl.local_train_steps=1",
            "gen.max_new_tokens_y0=8",
            "gen.max_new_tokens_y1=8",
            "gen.num_revisions=1",
            "gen.rollout_batch_size=6",
            "gen.eval_batch_size=8",
            "optim.batch_size=4",
            "optim.lr=0.01",
            "lora.last_n_layers=2",
            f"output_dir={run_dir}",
        ],
    )
    forget_policy()
    simulate(cfg, run_dir)
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [e["round"] for e in history] == [0, 1, 2]
    assert [e["eval"] is not None for e in history] == [True, False, True]  # eval_every 0
    # the aggregate of round 1 differs from the initial adapter only if some client trained
    assert sum(m["wins"] for m in history[1]["client_metrics"].values()) == 2  # seeded updates

    forget_policy()  # the benchmark starts from the same freshly initialised adapter
    measured = _round_cost().measure(cfg)
    by_update = {(row["round"], row["client"]): row for row in measured["clients"]}
    expected = {
        (e["round"], int(c)): m for e in history[1:] for c, m in e["client_metrics"].items()
    }
    assert sorted(by_update) == sorted(expected)
    for key, real in expected.items():
        row = by_update[key]
        mine = {
            "wins": row["wins"],
            "losses": row["losses"],
            "tokens_generated": row["tokens_generated"],
            "num_rollouts": row["rollouts"],
            "n_eff": row["n_eff"],
        }
        assert mine == {k: real[k] for k in SAME}, key
        spent = row["client_s"] - row["rollout_s"] - row["train_s"]
        assert row["overhead_s"] == pytest.approx(spent, abs=0.02)
    rounds = measured["rounds"]
    assert [r["eval_s"] is not None for r in rounds] == [False, True]
    assert rounds[1]["eval_accuracy"] == history[2]["eval"]["accuracy"]
    assert rounds[0]["tokens_generated"] == sum(
        m["tokens_generated"] for m in history[1]["client_metrics"].values()
    )
    # the process's high-water mark: reached by the last round's evaluation, reported as is
    assert (
        rounds[0]["peak_rss_mb"] <= rounds[1]["peak_rss_mb"] == measured["summary"]["peak_rss_mb"]
    )
    assert rounds[1]["rss_mb"] <= rounds[1]["peak_rss_mb"]
