"""A new algorithm is one file: ``tests/toy_algorithm.py``, named by ``algorithm.module``."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

import spearfl.algorithms.registry as registry
from spearfl.algorithms.base import ClientAlgorithm, ClientMetrics
from spearfl.config import ConfigError, Section, load_config, setting

TOY = Path(__file__).resolve().parent / "toy_algorithm.py"


@pytest.fixture(autouse=True)
def restore_registry():
    """Algorithms registered here leave the table as they found it for the other tests."""
    registry.algorithm_names()  # the shipped ones are in the table before it is saved
    saved = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


def _toy_config(folder: Path, body: str) -> Path:
    """A config beside a copy of the toy module, which it names by a relative path."""
    (folder / "algos").mkdir(parents=True, exist_ok=True)
    shutil.copy(TOY, folder / "algos" / "gold.py")
    path = folder / "run.yaml"
    path.write_text("algorithm: {name: gold_sft, module: algos/gold.py}\n" + body, encoding="utf-8")
    return path


def test_a_one_file_algorithm_brings_its_validated_section(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # the module's path is read from the config's folder
    path = _toy_config(tmp_path, "gold_sft: {prompts_per_step: 3}\n")
    cfg = load_config(path)
    assert cfg.algorithm.module == str(tmp_path / "algos" / "gold.py")  # absolute, for clients
    assert cfg.gold_sft.prompts_per_step == 3 and cfg.gold_sft.weight == 1.0
    assert registry.algorithm_names()[-1] == "gold_sft"
    assert cfg.to_dict()["gold_sft"] == {"prompts_per_step": 3, "weight": 1.0}
    assert load_config(None, [f"output_dir={tmp_path}", *_sets(cfg)]).gold_sft == cfg.gold_sft

    with pytest.raises(ConfigError, match=r"gold_sft.prompts_per_step must be >= 1, got 0"):
        load_config(path, ["gold_sft.prompts_per_step=0"])
    with pytest.raises(ConfigError, match=r"unknown key 'gold_sft.prompts'.*'gold_sft.prompts"):
        load_config(path, ["gold_sft.prompts=2"])
    with pytest.raises(ConfigError, match="algorithm.module: no such file"):
        load_config(None, ["algorithm.module=nowhere/algo.py"])
    with pytest.raises(ConfigError, match="algorithm.module: cannot import 'no_such_mod'"):
        load_config(None, ["algorithm.module=no_such_mod"])
    with pytest.raises(ConfigError, match="feedback.provider 'human' trains spear or feedback"):
        load_config(path, ["feedback.provider=human"])  # not registered with human_feedback


def _sets(cfg) -> list[str]:
    return [f"algorithm.module={cfg.algorithm.module}", "algorithm.name=gold_sft",
            "gold_sft.prompts_per_step=3"]  # fmt: skip


def test_the_reference_and_the_notes_list_a_loaded_algorithm(tmp_path):
    from spearfl.config_reference import render

    cfg = load_config(_toy_config(tmp_path, "spear: {lambda_lose: 0.5}\n"))
    text = render()
    assert "## `gold_sft`\n" in text and "Read by `gold_sft`." in text
    assert "| `prompts_per_step` | int | 2 | ≥ 1 | gold answers per micro-step |" in text
    assert "| `gold_sft` | the client's examples | gold answers trained on |" in text
    assert registry.algorithm_notes(cfg) == [
        "the spear section has no effect on gold_sft (it reads gold_sft)"
    ]


def test_registration_refuses_what_the_rest_of_the_project_could_not_use():
    @dataclass
    class Other(Section, section="spear"):  # a section name another algorithm declared
        x: int = setting(1, doc="x")

    class Silent(ClientAlgorithm):  # no METRIC_MEANINGS
        def update(self, global_adapter, examples, ctx): ...

    class Clashing(Silent):
        METRIC_MEANINGS = {"n_eff": "a", "wins": "b", "losses": "c"}

    with pytest.raises(TypeError, match="Silent.METRIC_MEANINGS must say what n_eff, wins, los"):
        registry.register_algorithm("silent")(Silent)
    with pytest.raises(ValueError, match="section 'spear' is already declared by"):
        registry.register_algorithm("clash", Other)(Clashing)
    with pytest.raises(ValueError, match="algorithm 'grpo' is already registered by"):
        registry.register_algorithm("grpo")(Clashing)
    with pytest.raises(TypeError, match="is not a config section"):
        registry.register_algorithm("clash", dict)(Clashing)  # type: ignore[arg-type]
    assert "silent" not in registry.algorithm_names() and "clash" not in registry.algorithm_names()


def test_the_metrics_record_names_what_an_update_forgot():
    values = {k: 1.0 for k in ClientMetrics.COMMON} | {"trained": 1, "mean_loss": 0.25}
    record = ClientMetrics.from_values(values)
    assert record.trained is True and record.extras == {"mean_loss": 0.25}
    assert record["wins"] == 1.0 and record["mean_loss"] == 0.25 and len(record) == 9
    assert record.to_record() == {**{k: 1.0 for k in ClientMetrics.COMMON}, "mean_loss": 0.25}
    with pytest.raises(ValueError, match="must report rollout_seconds, y0_accuracy"):
        ClientMetrics.from_values({k: v for k, v in values.items() if k not in
                                   ("rollout_seconds", "y0_accuracy")})  # fmt: skip
    with pytest.raises(ValueError, match="client metric 'note' must be a number"):
        ClientMetrics.from_values({**values, "note": "text"})


@pytest.mark.slow
def test_the_toy_runs_a_round_through_flower_and_joins_the_comparison(tiny_model_dir, tmp_path):
    """``spearfl compare`` of the toy against feedback-SFT: two real one-round runs on Flower's
    simulation engine, the toy's module imported again in the client processes."""
    from spearfl.cli.main import main
    from spearfl.reporting.comparison import COMPARISON_MD

    config = _toy_config(tmp_path, "gold_sft: {prompts_per_step: 2}\n")
    out = tmp_path / "cmp"
    sets = [
        f"model.model_name={tiny_model_dir}",
        "data.dataset=embedded",
        "data.num_clients=2",
        "fl.clients_per_round=2",
        "fl.rounds=1",
        "fl.local_rollout_steps=4",
        "fl.local_train_steps=1",
        "gen.max_new_tokens_y0=3",
        "gen.max_new_tokens_y1=3",
        "gen.num_revisions=1",
        "data.num_train_examples=60",
        "data.num_eval_examples=8",
        "data.min_examples_per_client=5",
        "optim.batch_size=2",
        "lora.last_n_layers=1",
        "lora.r=4",
    ]
    args = [
        "compare", str(config), "--algorithms", "gold_sft,feedback_sft",
        "--target", "gold_sft", "--baseline", "feedback_sft", "--output-dir", str(out),
    ]  # fmt: skip
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0

    history = [json.loads(x) for x in (out / "gold_sft" / "history.jsonl").read_text().splitlines()]
    sizes = json.loads((out / "gold_sft" / "partition.json").read_text())["sizes"]
    assert sorted(history[1]["clients"]) == [0, 1]
    for client, metrics in history[1]["client_metrics"].items():
        assert set(ClientMetrics.COMMON) <= set(metrics)
        assert metrics["wins"] == 2.0 and metrics["trained"] == 1.0  # 1 step x 2 gold answers
        assert metrics["tokens_generated"] == 0.0 and metrics["n_eff"] == sizes[int(client)]
        assert metrics["peak_rss_mb"] > 100  # torch and the model are loaded in the client
    losses = [m["mean_loss"] for m in history[1]["client_metrics"].values()]
    assert losses[0] != losses[1]  # each client trained on its own gold answers
    saved = load_config(out / "gold_sft" / "config.yaml")
    assert saved.algorithm.module == str(tmp_path / "algos" / "gold.py")
    report = (out / COMPARISON_MD).read_text(encoding="utf-8")
    assert "| gold_sft | " in report and "| feedback_sft | " in report
    assert "gold_sft vs feedback_sft: tokens per round 0.00× (0 vs" in report
