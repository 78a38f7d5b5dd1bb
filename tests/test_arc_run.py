"""A real 2-round SPEAR run on ARC-Challenge rows from ../shared/data with the embedded model."""

from __future__ import annotations

import json

import pytest

from spearfl.config import load_config


@pytest.mark.slow
def test_two_round_arc_run_with_embedded_model(shared_data, tmp_path):
    from spearfl.federation.simulation import simulate

    run_dir = tmp_path / "arc"
    cfg = load_config(
        None,
        [
            "data.dataset=arc_challenge",
            f"data.path={shared_data / 'arc_challenge'}",
            "data.num_clients=4",
            "data.max_eval_examples=32",
            "data.eval_every=1",
            "fl.rounds=2",
            "fl.clients_per_round=2",
            "fl.local_rollout_steps=4",
            "fl.local_train_steps=1",
            "gen.max_new_tokens_y0=4",
            "gen.max_new_tokens_y1=4",
            "gen.num_revisions=1",
            "gen.rollout_batch_size=4",
            "gen.eval_batch_size=16",
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
        assert entry["eval"]["method"] == "letter_loglik"
        assert entry["eval"]["n"] == 32
        assert 0.0 <= entry["eval"]["accuracy"] <= 1.0
    for entry in history[1:]:
        assert len(entry["clients"]) == 2
        for metrics in entry["client_metrics"].values():
            assert metrics["num_rollouts"] == 4
            assert metrics["tokens_generated"] > 0
    assert summary["rounds_completed"] == 2
    assert (run_dir / "adapters" / "final" / "adapter_model.safetensors").is_file()
    assert (run_dir / "curves.png").stat().st_size > 0
