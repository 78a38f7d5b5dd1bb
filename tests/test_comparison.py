"""``spearfl compare`` and its report, on hand-made run directories with known numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import spearfl.federation.simulation as simulation
from helpers import eval_record, write_finished_run
from spearfl.cli.main import main
from spearfl.reporting.comparison import (
    COMPARISON_MD,
    COMPARISON_PNG,
    TABLE_COLUMNS,
    Pair,
    load_run,
    per_round_table,
    ratio_line,
    table_rows,
    write_comparison,
)
from spearfl.reporting.history import HistoryWriter, write_summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPEAR_GRPO = Pair("spear", "grpo")


def _client(
    tokens: int, rollout: float, train: float, rss: float, right: int = 0, asked: int = 8
) -> dict[str, float]:
    return {
        "tokens_generated": tokens,
        "y0_correct": right,
        "num_rollouts": asked,
        "completions_generated": tokens // 4,
        "rollout_seconds": rollout,
        "train_seconds": train,
        "peak_rss_mb": rss,
        "adapter_bytes": 1000.0,
        "n_eff": 1.0,
    }


def _share_only(client: dict[str, float]) -> dict[str, float]:
    right = client.pop("y0_correct")
    return {**client, "y0_accuracy": right / client["num_rollouts"]}


def _entry(round_num: int, clients: dict[str, dict], accuracy: float | None) -> dict[str, Any]:
    ev = None if accuracy is None else {"accuracy": accuracy, "n": 40, "method": "letter_loglik"}
    return {"round": round_num, "clients": sorted(clients), "client_metrics": clients, "eval": ev}


def _write_run(run_dir: Path, history: list[dict[str, Any]], summary: dict[str, Any]) -> Path:
    writer = HistoryWriter(run_dir)
    for entry in history:
        writer.append(entry)
    write_summary(run_dir, summary)
    return run_dir


def _spear(run_dir: Path) -> Path:
    """3 rounds, 1,200 tokens (400, 500, 300), eval at rounds 0, 1 and 3."""
    history = [
        _entry(0, {}, 0.25),
        _entry(1, {"0": _client(300, 1.5, 2.0, 800, 2), "1": _client(100, 0.5, 1.0, 750, 1)}, 0.5),
        _entry(2, {"0": _client(500, 2.0, 1.0, 820, 4)}, None),
        _entry(3, {"1": _client(300, 1.0, 1.5, 790, 6)}, 0.6),
    ]
    summary = {
        "initial_accuracy": 0.25,
        "final_accuracy": 0.6,
        "best_accuracy": 0.6,
        "best_round": 3,
        "rounds_completed": 3,
        "wall_seconds": 30.25,
    }
    return _write_run(run_dir, history, summary)


def _grpo(run_dir: Path) -> Path:
    """3 rounds, 4,800 tokens (1,600 a round), best accuracy at round 2."""
    history = [
        _entry(0, {}, 0.25),
        _entry(
            1,
            {"0": _client(800, 6.0, 4.0, 990, 10, 32), "2": _client(800, 6.0, 4.0, 1000, 6, 32)},
            0.45,
        ),
        # a client that reports only the share of right first answers, as older runs did
        _entry(2, {"2": _share_only(_client(1600, 12.0, 8.0, 1000, 20, 64))}, 0.57),
        _entry(3, {"1": _client(1600, 11.5, 7.5, 960, 32, 64)}, 0.55),
    ]
    summary = {
        "initial_accuracy": 0.25,
        "final_accuracy": 0.55,
        "best_accuracy": 0.57,
        "best_round": 2,
        "rounds_completed": 3,
        "wall_seconds": 120.0,
    }
    return _write_run(run_dir, history, summary)


def test_load_run_sums_client_costs_and_tracks_cumulative_tokens(tmp_path):
    stats = load_run("spear", _spear(tmp_path / "spear"))
    assert stats.tokens == 1200 and stats.tokens_per_round == 400.0
    assert stats.completions == 300 and stats.completions_per_round == 100.0
    assert (stats.rollout_seconds, stats.train_seconds, stats.wall_seconds) == (5.0, 5.5, 30.25)
    assert stats.peak_rss_mb == 820.0
    assert stats.bytes_per_client_round == 2000.0  # adapter down + adapter up
    assert stats.curve == ((0, 0.25, 0), (1, 0.5, 400), (3, 0.6, 1200))


def test_table_and_ratio_line_from_two_runs(tmp_path):
    runs = {"spear": _spear(tmp_path / "spear"), "grpo": _grpo(tmp_path / "grpo")}
    md, png = write_comparison(runs, tmp_path, note="Config: test.", pair=SPEAR_GRPO)
    assert md == tmp_path / COMPARISON_MD and png == tmp_path / COMPARISON_PNG
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000

    stats = [load_run(name, folder) for name, folder in runs.items()]
    spear, grpo = table_rows(stats)
    assert spear == {
        "algorithm": "spear",
        "initial acc": "0.250",
        "final acc": "0.600",
        "best acc": "0.600",
        "rounds": "3",
        "tokens": "1,200",
        "tokens/round": "400",
        "completions/round": "100",
        "rollout s": "5.0",
        "train s": "5.5",
        "total s": "30.2",
        "peak client MB": "820",
        "bytes/client/round": "2,000",
    }
    assert [grpo[c] for c in TABLE_COLUMNS] == [
        "grpo", "0.250", "0.550", "0.570", "3", "4,800", "1,600", "400",
        "35.5", "23.5", "120.0", "1,000", "2,000",
    ]  # fmt: skip
    expected_ratio = (
        "spear vs grpo: tokens per round 0.25× (400 vs 1,600); "
        "completions per round 0.25× (100 vs 400); "
        "final accuracy +0.050 (0.600 vs 0.550); "
        "peak client memory 0.82× (820 vs 1,000 MB)."
    )
    assert ratio_line(stats, SPEAR_GRPO) == expected_ratio
    # the pair is a choice, not a name: the other way round, the ratios invert
    assert ratio_line(stats, Pair("grpo", "spear")).startswith(
        "grpo vs spear: tokens per round 4.00× (1,600 vs 400); "
        "completions per round 4.00× (400 vs 100); final accuracy -0.050 (0.550 vs 0.600)"
    )

    text = md.read_text(encoding="utf-8")
    assert "Config: test." in text
    assert "| " + " | ".join(TABLE_COLUMNS) + " |" in text
    assert (
        "| spear | 0.250 | 0.600 | 0.600 | 3 | 1,200 | 400 | 100 | 5.0 | 5.5 | 30.2 | 820 "
        "| 2,000 |" in text
    )
    assert "| grpo | 0.250 | 0.550 | 0.570 | 3 | 4,800 | 1,600 |" in text
    assert expected_ratio in text


def test_per_round_table_pairs_rounds_and_first_answer_accuracy(tmp_path):
    runs = {"spear": _spear(tmp_path / "spear"), "grpo": _grpo(tmp_path / "grpo")}
    stats = [load_run(name, folder) for name, folder in runs.items()]
    assert [(c.round, c.tokens, c.first_right, c.first_total) for c in stats[0].per_round] == [
        (1, 400, 3, 16),
        (2, 500, 4, 8),
        (3, 300, 6, 8),
    ]
    assert per_round_table(stats, SPEAR_GRPO) == [
        "| round | spear tokens | spear first right | grpo tokens | grpo first right "
        "| spear/grpo tokens |",
        "|---:|---:|---:|---:|---:|---:|",
        "| 1 | 400 | 19% | 1,600 | 25% | 0.25 |",  # 3/16 and 16/64
        "| 2 | 500 | 50% | 1,600 | 31% | 0.31 |",  # 4/8 and 20/64
        "| 3 | 300 | 75% | 1,600 | 50% | 0.19 |",  # 6/8 and 32/64
    ]
    md, _ = write_comparison(runs, tmp_path, pair=SPEAR_GRPO)
    assert "| 2 | 500 | 50% | 1,600 | 31% | 0.31 |" in md.read_text(encoding="utf-8")
    # without the pair's baseline, or without a pair, there is no ratio column; a round with no
    # clients gets no row
    (solo,) = [load_run("spear", runs["spear"])]
    assert per_round_table([solo], SPEAR_GRPO)[0] == "| round | spear tokens | spear first right |"
    assert len(per_round_table([solo], SPEAR_GRPO)) == 5
    assert per_round_table(stats)[0].endswith("| grpo first right |")


def test_no_ratio_line_without_both_spear_and_grpo(tmp_path):
    md, _ = write_comparison({"spear": _spear(tmp_path / "spear")}, tmp_path, pair=SPEAR_GRPO)
    assert "spear vs grpo" not in md.read_text(encoding="utf-8")
    assert ratio_line([load_run("spear", tmp_path / "spear")], SPEAR_GRPO) is None


def test_unfinished_run_is_reported_from_its_history(tmp_path):
    run_dir = _spear(tmp_path / "spear")
    (run_dir / "summary.json").unlink()
    (row,) = table_rows([load_run("spear", run_dir)])
    assert (row["final acc"], row["best acc"], row["rounds"]) == ("0.600", "0.600", "3")
    assert row["total s"] == "-"


# ----------------------------------------------------------------------- the CLI
def _finished(cfg, run_dir: Path, clients_in_round: dict[int, int] | None = None) -> Path:
    """A complete run of ``cfg`` in ``run_dir``: its config, ``fl.rounds`` rounds of
    ``fl.clients_per_round`` clients (or ``clients_in_round[r]``), summary and marker."""
    from spearfl.config import save_config
    from spearfl.reporting.history import write_complete

    save_config(cfg, run_dir / "config.yaml")
    history = [_entry(0, {}, 0.25)]
    for r in range(1, cfg.fl.rounds + 1):
        count = (clients_in_round or {}).get(r, cfg.fl.clients_per_round)
        clients = {str(c): _client(100 * r, 1.0, 1.0, 800, 1) for c in range(count)}
        history.append(_entry(r, clients, 0.25 + 0.1 * r))
    _write_run(run_dir, history, {"rounds_completed": cfg.fl.rounds, "wall_seconds": 9.0})
    write_complete(run_dir, cfg.fl.rounds, cfg.fl.clients_per_round)
    return run_dir


def _config_for(out: Path, name: str, *sets: str):
    """The config ``spearfl compare --set SETS`` gives ``name`` (the embedded demo's file)."""
    from spearfl.config import load_config
    from spearfl.presets import default_config_path

    overrides = [*sets, f"algorithm.name={name}", f"output_dir={out / name}"]
    return load_config(default_config_path(), overrides)


@pytest.fixture
def fake_simulate(monkeypatch) -> list[tuple[str, Path, bool]]:
    """Replaces the simulation with one that writes a small finished run; records its calls."""
    calls: list[tuple[str, Path, bool]] = []

    def simulate(cfg, run_dir, observer=None, *, resume=False, **_):
        calls.append((cfg.algorithm.name, Path(run_dir), resume))
        assert Path(cfg.output_dir) == Path(run_dir)
        _finished(cfg, Path(run_dir))
        return {}

    monkeypatch.setattr(simulation, "simulate", simulate)
    return calls


def test_compare_rejects_unknown_algorithm_before_running(tmp_path, capsys, fake_simulate):
    out = tmp_path / "cmp"
    code = main(["compare", "--algorithms", "spear,nope", "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "nope" in err and "known: " in err
    assert "spear" in err and "feedback_sft" in err and "opsd" in err
    assert fake_simulate == [] and not out.exists()


def test_compare_config_error_is_reported_like_run(tmp_path, capsys, fake_simulate):
    out = tmp_path / "cmp"
    code = main(
        ["compare", "--algorithms", "spear", "--set", "spear.lamda_win=1", "--output-dir", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("spearfl: config error:") and "spear.lamda_win" in err
    assert fake_simulate == [] and not out.exists()


def test_compare_keeps_complete_runs_and_resumes_interrupted_ones(tmp_path, capsys, fake_simulate):
    from spearfl.config import save_config

    out = tmp_path / "cmp"
    _finished(_config_for(out, "feedback_sft", "fl.rounds=3"), out / "feedback_sft")
    interrupted = _config_for(out, "opsd", "fl.rounds=3")
    save_config(interrupted, out / "opsd" / "config.yaml")  # cut off in its round 0
    (out / "opsd" / "history.jsonl").write_text('{"round": 0}\n')
    args = ["compare", "--algorithms", "spear, opsd,feedback_sft,spear", "--output-dir", str(out)]
    args += ["--set", "fl.rounds=3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"spear: {out / 'spear'}: absent" in printed
    assert f"opsd: {out / 'opsd'}: interrupted before its first checkpoint" in printed
    assert f"feedback_sft: {out / 'feedback_sft'}: complete (3 rounds)" in printed
    assert fake_simulate == [("spear", out / "spear", False), ("opsd", out / "opsd", True)]
    text = (out / COMPARISON_MD).read_text(encoding="utf-8")
    assert text.index("| spear |") < text.index("| opsd |") < text.index("| feedback_sft |")
    assert (out / COMPARISON_PNG).read_bytes()[:8] == PNG_MAGIC

    fake_simulate.clear()
    assert main(args) == 0  # everything finished: nothing runs again
    assert fake_simulate == []
    assert printed.count("complete (3 rounds)") == 1
    assert capsys.readouterr().out.count("complete (3 rounds)") == 3


def test_compare_refuses_runs_of_other_settings_unless_overwrite(tmp_path, capsys, fake_simulate):
    out = tmp_path / "cmp"
    _finished(_config_for(out, "spear", "fl.rounds=2"), out / "spear")  # another comparison's
    # The failure the old code produced: a round aggregated after one client was lost.
    _finished(_config_for(out, "grpo", "fl.rounds=3"), out / "grpo", {2: 1})
    args = ["compare", "--algorithms", "spear,grpo", "--output-dir", str(out), "--set"]
    assert main([*args, "fl.rounds=3"]) == 2
    err = capsys.readouterr().err
    assert "spear: " in err and "other settings: fl.rounds=2 (here 3)" in err
    assert "grpo: " in err and "round(s) 2 (1) aggregated other than 2 clients per round" in err
    assert "--overwrite" in err and fake_simulate == [] and not (out / COMPARISON_MD).exists()

    assert main([*args, "fl.rounds=3", "--overwrite"]) == 0
    assert fake_simulate == [("spear", out / "spear", False), ("grpo", out / "grpo", False)]
    assert len(list(out.glob("spear.old-*"))) == 1 and len(list(out.glob("grpo.old-*"))) == 1
    assert (out / COMPARISON_MD).is_file()


def _adapter(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.slow
def test_compare_end_to_end_on_a_tiny_model(tiny_model_dir, tmp_path):
    """Two real runs in one process start from the same adapter and report their costs."""
    out = tmp_path / "cmp"
    sets = [
        f"model.model_name={tiny_model_dir}",
        "data.num_clients=3",
        "fl.clients_per_round=2",
        "fl.rounds=1",
        "fl.local_rollout_steps=4",
        "fl.local_train_steps=1",
        "gen.max_new_tokens_y0=4",
        "gen.max_new_tokens_y1=4",
        "gen.num_revisions=1",
        "data.num_train_examples=120",
        "data.num_eval_examples=16",
        "data.min_examples_per_client=5",
        "optim.batch_size=2",
        "lora.last_n_layers=1",
        "lora.r=4",
    ]
    args = ["compare", "--algorithms", "opsd,spear", "--output-dir", str(out)]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    histories = {
        name: [json.loads(line) for line in (out / name / "history.jsonl").read_text().splitlines()]
        for name in ("opsd", "spear")
    }
    drop_time = [
        {k: v for k, v in h[0]["eval"].items() if k != "seconds"} for h in histories.values()
    ]
    assert drop_time[0] == drop_time[1]
    # The second run starts from the same initial adapter, not from where the first one ended.
    opsd_start = _adapter(out / "opsd" / "adapters" / "round_0000")
    opsd_end = _adapter(out / "opsd" / "adapters" / "final")
    spear_start = _adapter(out / "spear" / "adapters" / "round_0000")
    assert opsd_start.keys() == spear_start.keys() and opsd_start
    assert all(torch.equal(opsd_start[k], spear_start[k]) for k in opsd_start)
    assert not all(torch.equal(opsd_start[k], opsd_end[k]) for k in opsd_start)
    assert histories["opsd"][1]["clients"] == histories["spear"][1]["clients"]
    for history in histories.values():
        for metrics in history[1]["client_metrics"].values():
            assert metrics["peak_rss_mb"] > 50
            assert metrics["adapter_bytes"] > 0
    rows = load_run("opsd", out / "opsd"), load_run("spear", out / "spear")
    assert rows[0].adapter_bytes == rows[1].adapter_bytes
    assert (out / COMPARISON_MD).is_file() and (out / COMPARISON_PNG).is_file()


@pytest.fixture
def fake_seed_simulate(monkeypatch) -> list[tuple[str, int, Path, bool]]:
    """A simulation that writes a complete run with per-question records: of 20 eval
    questions SPEAR gets 10 + (seed - 40) right in its last round, GRPO 8."""
    from spearfl.config import save_config
    from spearfl.reporting.history import write_complete

    calls: list[tuple[str, int, Path, bool]] = []

    def simulate(cfg, run_dir, observer=None, *, resume=False, **_):
        run_dir = Path(run_dir)
        calls.append((cfg.algorithm.name, cfg.data.seed, run_dir, resume))
        right = 10 + cfg.data.seed - 40 if cfg.algorithm.name == "spear" else 8
        evals = {
            0: eval_record([1] * 5 + [0] * 15),
            1: eval_record([1] * right + [0] * (20 - right)),
        }
        save_config(cfg, run_dir / "config.yaml")
        write_finished_run(run_dir, [f"q{i}" for i in range(20)], evals, rounds=1)
        write_complete(run_dir, 1, cfg.fl.clients_per_round)
        return {}

    monkeypatch.setattr(simulation, "simulate", simulate)
    return calls


def test_compare_over_seeds_runs_each_seed_and_reports_paired_intervals(
    tmp_path, capsys, fake_seed_simulate
):
    out = tmp_path / "cmp"
    args = ["compare", "--algorithms", "grpo,spear", "--seeds", "41,42", "--output-dir", str(out)]
    args += ["--set", "fl.rounds=1", "--set", "fl.clients_per_round=1"]
    assert main(args) == 0
    assert fake_seed_simulate == [
        ("grpo", 41, out / "seed-41" / "grpo", False),
        ("spear", 41, out / "seed-41" / "spear", False),
        ("grpo", 42, out / "seed-42" / "grpo", False),
        ("spear", 42, out / "seed-42" / "spear", False),
    ]
    text = (out / COMPARISON_MD).read_text(encoding="utf-8")
    assert text.startswith("# Algorithm comparison over seeds 41, 42")
    spear_row = next(line for line in text.splitlines() if line.startswith("| spear |"))
    assert "0.550, 0.600" in spear_row  # final accuracy per seed: 11/20 and 12/20
    assert "spear against each baseline" in text
    grpo_diff = next(
        line for line in text.splitlines() if line.startswith("| grpo |") and "1.000" in line
    )
    # Mean paired difference (0.15 + 0.20) / 2, the seeded bootstrap's interval, P = 1.
    assert grpo_diff.startswith("| grpo | +0.175 [+0.075, +0.300] | 1.000 |")

    # A second call keeps every complete run; a missing one of seed 42 is run again.
    import shutil

    shutil.rmtree(out / "seed-42" / "spear")
    fake_seed_simulate.clear()
    assert main(args) == 0
    assert fake_seed_simulate == [("spear", 42, out / "seed-42" / "spear", False)]


def test_compare_target_must_be_one_of_the_algorithms(tmp_path, capsys, fake_seed_simulate):
    args = ["compare", "--algorithms", "grpo,opsd", "--target", "spear", "--seeds", "1,2"]
    assert main([*args, "--output-dir", str(tmp_path / "cmp")]) == 2
    assert "--target 'spear' is not among --algorithms grpo,opsd" in capsys.readouterr().err
    assert fake_seed_simulate == []


def test_the_cost_line_pairs_the_algorithms_the_command_chose():
    from spearfl.cli.compare import cost_pair

    both = ["spear", "grpo", "opsd"]
    assert cost_pair("spear", None, both) == Pair("spear", "grpo")  # grpo when it runs
    assert cost_pair("spear", None, ["spear", "opsd"]) is None
    assert cost_pair("grpo", None, both) is None  # never the target against itself
    assert cost_pair("opsd", "spear", both) == Pair("opsd", "spear")
    assert cost_pair("spear", "none", both) is None
    for baseline in ("rltf_sd", "spear"):
        with pytest.raises(ValueError, match=f"--baseline '{baseline}' must be another of"):
            cost_pair("spear", baseline, both)


def test_compare_refuses_a_baseline_that_does_not_run(tmp_path, capsys, fake_simulate):
    out = tmp_path / "cmp"
    args = ["compare", "--algorithms", "spear,opsd", "--baseline", "grpo", "--output-dir", str(out)]
    assert main(args) == 2
    assert "--baseline 'grpo' must be another of --algorithms spear,opsd" in capsys.readouterr().err
    assert fake_simulate == [] and not out.exists()
