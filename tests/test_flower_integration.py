"""End to end on a tiny random Llama: the Flower simulation and a real in-process SPEAR update."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers import tiny_run_overrides
from spearfl.config import load_config

pytestmark = pytest.mark.slow


def _adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_flower_simulation_end_to_end(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from spearfl.federation.server import select_clients
    from spearfl.federation.simulation import simulate

    run_dir = tmp_path / "run"
    cfg = load_config(None, tiny_run_overrides(tiny_model_dir, run_dir))
    summary = simulate(cfg, run_dir)

    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [entry["round"] for entry in history] == [0, 1, 2]
    assert history[0]["clients"] == []
    for entry in history[1:]:
        r = entry["round"]
        expected = select_clients(3, 2, 42, r)
        assert len(expected) == 2
        assert entry["clients"] == expected
        assert sorted(int(c) for c in entry["client_metrics"]) == expected
        for metrics in entry["client_metrics"].values():
            assert metrics["tokens_generated"] > 0
            assert metrics["rollout_seconds"] > 0
            assert metrics["num_rollouts"] == 8
            wins = metrics["wins"]
            # FedAvg weight: #wins when trained, the number of rollouts when skipped
            assert metrics["n_eff"] == (max(1, wins) if wins else 8)
    for entry in history:
        assert entry["eval"]["n"] == 16
        hits = entry["eval"]["correct"]  # the accuracy is the share of per-question hits
        assert len(hits) == entry["eval"]["n"] and set(hits) <= {0, 1}
        assert entry["eval"]["accuracy"] == round(sum(hits) / len(hits), 4)

    assert summary["rounds_completed"] == 2
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["rounds_completed"] == 2
    assert saved["initial_accuracy"] == history[0]["eval"]["accuracy"]
    assert saved["final_accuracy"] == history[2]["eval"]["accuracy"]
    assert (run_dir / "curves.png").stat().st_size > 0

    final_dir = run_dir / "adapters" / "final"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    loaded = PeftModel.from_pretrained(base, final_dir)
    assert any("lora_" in name for name, _ in loaded.named_parameters())

    # The SPEC's skip rule: with no win anywhere every client returns the adapter it received,
    # so the global adapter cannot move; any win trains and moves it.
    total_wins = sum(m["wins"] for e in history[1:] for m in e["client_metrics"].values())
    assert saved["total_wins"] == total_wins
    initial = _adapter_tensors(run_dir / "adapters" / "round_0000")
    final = _adapter_tensors(final_dir)
    assert initial.keys() == final.keys() and initial
    same = all(torch.equal(initial[k], final[k]) for k in initial)
    # The tiny random model answers nothing right in these rounds (the next test trains on
    # wins), so every client skipped training and the global adapter stayed where it was.
    assert total_wins == 0
    assert same
    assert all(m["trained"] == 0 for e in history[1:] for m in e["client_metrics"].values())


def test_in_process_spear_update_trains_on_wins(tiny_model_dir, tmp_path):
    from spearfl.algorithms.base import RoundContext
    from spearfl.algorithms.spear import SpearUpdate
    from spearfl.feedback.oracle import OracleFeedback
    from spearfl.models.policy import Policy
    from spearfl.tasks.embedded import EmbeddedCategoryTask

    class EveryOtherRight(EmbeddedCategoryTask):
        """Any answer counts as right for even-numbered examples, none for odd ones."""

        def is_correct(self, example, completion):
            return int(example.uid.rsplit("-", 1)[1]) % 2 == 0

    cfg = load_config(None, tiny_run_overrides(tiny_model_dir, tmp_path / "unused"))
    task = EveryOtherRight(seed=42, num_train_examples=120, num_eval_examples=16)
    examples = task.load().train[:8]
    n_right = sum(int(ex.uid.rsplit("-", 1)[1]) % 2 == 0 for ex in examples)
    assert 0 < n_right < 8

    policy = Policy.from_config(cfg)
    received = policy.get_adapter()
    spear = SpearUpdate(cfg, policy, task, OracleFeedback(task))
    result = spear.update(received, examples, RoundContext(1, 2, 0, 42))

    m = result.metrics
    assert m["num_rollouts"] == 8
    assert m["wins"] == n_right and m["y0_correct"] == n_right
    assert result.n_eff == float(n_right)
    n_wrong = 8 - n_right
    assert m["revisions_attempted"] == n_wrong and m["revisions_successful"] == 0
    assert m["losses_before_cap"] == n_wrong
    assert m["losses"] == min(n_wrong, math.floor(2.0 * n_right))
    assert m["trained"] == 1
    assert m["steps"] == cfg.fl.local_train_steps == 2
    assert m["skipped_steps"] == 0
    assert math.isfinite(m["mean_loss"]) and m["mean_loss"] > 0
    assert m["lr"] == pytest.approx(0.01)  # round 1 of 2 with ratio 0.1: one warmup round
    assert result.adapter.keys() == received.keys()
    changed = [k for k in received if not torch.equal(result.adapter[k], received[k])]
    assert changed
    # the returned adapter is the policy's trained one, not a reference into the model
    assert all(torch.equal(result.adapter[k], v) for k, v in policy.get_adapter().items())
