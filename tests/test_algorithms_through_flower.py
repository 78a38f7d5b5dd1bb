"""One real round of every algorithm through Flower's simulation engine, on a tiny Llama."""

from __future__ import annotations

import json

import pytest

from spearfl.algorithms.base import ClientMetrics
from spearfl.algorithms.registry import algorithm_names
from spearfl.config import load_config

EXPECTED_N_EFF = {  # each algorithm's FedAvg weight, from what the client reported
    # the wins when trained, else the rollouts
    "spear": lambda m, size: max(1.0, m["wins"]) if m["trained"] else m["num_rollouts"],
    "feedback_sft": lambda m, size: max(1.0, m["wins"]) if m["trained"] else m["num_rollouts"],
    # every example could have been drawn: the client's dataset size
    "grpo": lambda m, size: float(size),
    # non-empty answers; the tiny model's 3-token answers all are
    "opsd": lambda m, size: m["num_rollouts"],
    # 4 rollout steps / N = 2 -> 2 prompts x 2 samples = 4 traces
    "rltf_sd": lambda m, size: 4.0,
}


def test_every_registered_algorithm_has_its_expected_weight_here():
    assert sorted(EXPECTED_N_EFF) == sorted(algorithm_names())


@pytest.mark.slow
@pytest.mark.parametrize("name", algorithm_names())
def test_one_round_of_each_algorithm(name, tiny_model_dir, tmp_path):
    from spearfl.federation.simulation import simulate

    run_dir = tmp_path / name
    cfg = load_config(
        None,
        [
            f"algorithm.name={name}",
            f"model.model_name={tiny_model_dir}",
            "data.dataset=embedded",
            "data.num_clients=2",
            "data.num_train_examples=60",
            "data.num_eval_examples=8",
            "data.min_examples_per_client=5",
            "fl.rounds=1",
            "fl.clients_per_round=2",
            "fl.local_rollout_steps=4",
            "fl.local_train_steps=1",
            "gen.max_new_tokens_y0=3",
            "gen.max_new_tokens_y1=3",
            "gen.num_revisions=1",
            "grpo.num_generations=2",
            "optim.batch_size=2",
            "lora.last_n_layers=1",
            "lora.r=4",
            f"output_dir={run_dir}",
        ],
    )
    summary = simulate(cfg, run_dir)
    assert summary["rounds_completed"] == 1
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["round"] for h in history] == [0, 1]
    round_one = history[1]
    assert sorted(round_one["clients"]) == [0, 1]
    sizes = json.loads((run_dir / "partition.json").read_text())["sizes"]
    for client, metrics in round_one["client_metrics"].items():
        assert set(ClientMetrics.COMMON) <= set(metrics)
        assert metrics["tokens_generated"] > 0
        assert metrics["rollout_seconds"] > 0
        assert metrics["n_eff"] == EXPECTED_N_EFF[name](metrics, sizes[int(client)]), client
        if name == "rltf_sd":
            assert metrics["rollout_prompts"] == 2
        assert metrics["peak_rss_mb"] > 0
        assert metrics["adapter_bytes"] > 0
    assert history[1]["eval"]["n"] == 8
