"""Every file in configs/paper runs 2 rounds through Flower's simulation engine, unchanged except
for the model (the tiny random model of its architecture, with the real tokenizer), the data
folder and a few sizes. All 40 runs share one simulation: Ray starts once, the ServerApp runs
the files' round loops in turn, and the ClientApp builds its worker from each message's config.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, tiny_paper_model_folder
from helpers import paper_data_folder
from spearfl.config import load_config

PAPER = sorted((REPO_ROOT / "configs" / "paper").glob("*.yaml"))
FAMILY = {"qwen2.5-1.5b": "qwen2", "llama3.2-3b": "llama3"}
SMALL = [
    "data.num_clients=2",
    "fl.clients_per_round=1",
    "data.min_examples_per_client=5",
    "data.max_examples_per_client=12",
    "data.max_eval_examples=2",
    "fl.rounds=2",
    "fl.local_rollout_steps=2",
    "fl.local_train_steps=1",
    "gen.max_new_tokens_y0=4",
    "gen.max_new_tokens_y1=4",
    "gen.num_revisions=1",
    "gen.eval_batch_size=2",
    "optim.batch_size=2",
    "optim.grad_accum_steps=1",
    "hf.offline=true",
]


def paper_runs(shared: Path, tmp: Path, tmp_path_factory) -> list[tuple]:
    """(config, run directory) of every paper file, in an order that lets a worker keep its
    model and task data from one run to the next (model, task, feedback settings)."""
    runs = []
    for path in PAPER:
        model = path.stem.rsplit("_", 1)[1]
        task = load_config(path).data.dataset
        tiny = tiny_paper_model_folder(FAMILY[model], tmp_path_factory)
        overrides = [
            f"model.model_name={tiny}",
            f"data.path={paper_data_folder(task, shared, tmp)}",
            *SMALL,
            f"output_dir={tmp / path.stem}",
        ]
        runs.append((load_config(path, overrides), tmp / path.stem))
    return sorted(
        runs,
        key=lambda run: (run[0].model.model_name, run[0].data.dataset, repr(run[0].feedback)),
    )


@pytest.mark.slow
def test_every_paper_file_runs_two_rounds(shared_data, tmp_path, tmp_path_factory):
    from spearfl.federation.simulation import simulate_runs

    runs = paper_runs(shared_data, tmp_path, tmp_path_factory)
    assert len(runs) == 40
    started = time.perf_counter()
    summaries = simulate_runs(runs)
    seconds = time.perf_counter() - started
    print(f"40 paper files x 2 rounds in one simulation: {seconds:.0f} s")

    for (cfg, run_dir), summary in zip(runs, summaries):
        name = run_dir.name
        assert summary["rounds_completed"] == 2, name
        history = [
            json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()
        ]
        assert [h["round"] for h in history] == [0, 1, 2], name
        assert history[0]["eval"] is not None and history[2]["eval"] is not None, name
        assert history[2]["eval"]["n"] == 2, name
        for entry in history[1:]:
            assert len(entry["clients"]) == 1, name
            for metrics in entry["client_metrics"].values():
                assert metrics["tokens_generated"] > 0, name
        saved = load_config(run_dir / "config.yaml")
        assert saved.algorithm.name == cfg.algorithm.name and saved == cfg, name
        for part in ("partition.json", "checkpoint.safetensors", "curves.png", "summary.json"):
            assert (run_dir / part).is_file(), f"{name}: {part}"
        for adapter in ("round_0000", "round_0002", "final"):
            assert (run_dir / "adapters" / adapter / "adapter_model.safetensors").is_file(), name
        method = "generative" if cfg.data.dataset in ("math_mcqa", "strategy_qa") else "letter"
        assert summary["eval_method"].startswith(method), name
        assert summary["eval_split"] == history[2]["eval"]["eval_split"], name
    splits = {cfg.data.dataset: s["eval_split"] for (cfg, _), s in zip(runs, summaries)}
    # ARC's local copy has no test split (validation stands in); StrategyQA's has train only.
    assert splits == {
        "arc_challenge": "validation",
        "hellaswag": "last 100 rows of validation",
        "math_mcqa": "test",
        "strategy_qa": "last 32 rows of train",
    }
