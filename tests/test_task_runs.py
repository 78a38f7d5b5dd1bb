"""Real 2-round SPEAR runs with the embedded model on the shared benchmark rows."""

from __future__ import annotations

import json

import pytest

from spearfl.config import load_config

RUNS = {
    "arc_challenge": ("arc_challenge", "letter_loglik"),
    "hellaswag": ("hellaswag", "letter_loglik"),
    "strategyqa": ("strategy_qa", "generative"),
}


@pytest.mark.slow
@pytest.mark.parametrize("dataset", sorted(RUNS))
def test_two_round_run_with_embedded_model(dataset, shared_data, tmp_path):
    from spearfl.federation.simulation import simulate

    folder, method = RUNS[dataset]
    run_dir = tmp_path / dataset
    cfg = load_config(
        None,
        [
            f"data.dataset={dataset}",
            f"data.path={shared_data / folder}",
            "data.num_clients=4",
            "data.max_eval_examples=24",
            "data.eval_every=1",
            "fl.rounds=2",
            "fl.clients_per_round=2",
            "fl.local_rollout_steps=4",
            "fl.local_train_steps=1",
            "gen.max_new_tokens_y0=8",
            "gen.max_new_tokens_y1=8",
            "gen.num_revisions=1",
            "gen.rollout_batch_size=4",
            "gen.eval_batch_size=12",
            "optim.batch_size=2",
            "optim.lr=1e-4",
            "lora.last_n_layers=2",
            f"output_dir={run_dir}",
        ],
    )
    summary = simulate(cfg, run_dir)
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["round"] for h in history] == [0, 1, 2]
    for entry in history:
        assert entry["eval"]["method"] == method
        assert entry["eval"]["n"] == 24
        hits = entry["eval"]["correct"]  # the accuracy is the share of per-question hits
        assert len(hits) == entry["eval"]["n"] and set(hits) <= {0, 1}
        assert entry["eval"]["accuracy"] == round(sum(hits) / len(hits), 4)
    for entry in history[1:]:
        assert len(entry["clients"]) == 2
        for metrics in entry["client_metrics"].values():
            assert metrics["num_rollouts"] == 4
            assert metrics["tokens_generated"] > 0
    assert summary["rounds_completed"] == 2
    assert (run_dir / "adapters" / "final" / "adapter_model.safetensors").is_file()
    assert (run_dir / "curves.png").stat().st_size > 0
