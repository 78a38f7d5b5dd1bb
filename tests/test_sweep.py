"""``spearfl sweep``: the grid, its cells and their names, resuming, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import spearfl.federation.simulation as simulation
from helpers import eval_record, tiny_run_overrides, write_finished_run
from spearfl.cli.main import main
from spearfl.cli.options import parse_seeds
from spearfl.cli.sweep import Cell, cell_finished, expand_grid, parse_grid
from spearfl.reporting.sweep import SWEEP_MD, SWEEP_PNG

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N = 20


def test_grid_expands_to_the_cartesian_product_seed_by_seed():
    grid = parse_grid(["spear.lambda_lose=0.03, 0.1", "gen.temperature=0.7,1.0"])
    assert grid == [("spear.lambda_lose", ["0.03", "0.1"]), ("gen.temperature", ["0.7", "1.0"])]
    cells = expand_grid(grid, [42, 43])
    assert [c.name for c in cells] == [
        f"spear.lambda_lose={lam},gen.temperature={t},seed={s}"
        for s in (42, 43)
        for lam in ("0.03", "0.1")
        for t in ("0.7", "1.0")
    ]
    assert cells[1].overrides(Path("out")) == [
        "spear.lambda_lose=0.03",
        "gen.temperature=1.0",
        "data.seed=42",
        "output_dir=out/spear.lambda_lose=0.03,gen.temperature=1.0,seed=42",
    ]
    # a path value keeps a readable, single-folder name
    assert (
        Cell((("model.model_name", "/m/tiny llama"),), 7).name
        == "model.model_name=_m_tiny_llama,seed=7"
    )


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["spear.lambda_lose"], "expected section.key=value,value"),
        (["spear.lambda_lose="], "expected section.key=value,value"),
        (["data.seed=1,2"], "not a grid key; the seeds of a sweep are given with --seeds"),
        (["output_dir=a,b"], "every cell gets its own run directory"),
        (["spear.lambda_lose=0.1", "spear.lambda_lose=0.3"], "is given twice"),
        (["spear.lambda_lose=0.1,0.3,0.1"], "value '0.1' is listed twice"),
        ([], "give at least one --grid"),
    ],
)
def test_malformed_grids_are_refused(items, message):
    with pytest.raises(ValueError, match=message):
        parse_grid(items)


def test_seeds_parse_in_order_without_repeats():
    assert parse_seeds("42, 43,42,44", 1) == [42, 43, 44]
    assert parse_seeds(None, 7) == [7]
    with pytest.raises(ValueError, match="--seeds: 'x' is not an integer"):
        parse_seeds("42,x", 1)
    with pytest.raises(ValueError, match="give at least one seed"):
        parse_seeds(" , ", 1)


# -------------------------------------------------------------- the command line
@pytest.fixture
def fake_simulate(monkeypatch) -> list[tuple[float, int, Path]]:
    """Writes a finished run whose accuracy follows lambda_lose and the seed; records calls."""
    calls: list[tuple[float, int, Path]] = []

    def simulate(cfg, run_dir, observer=None):
        lam, seed = cfg.spear.lambda_lose, cfg.data.seed
        calls.append((lam, seed, Path(run_dir)))
        assert Path(cfg.output_dir) == Path(run_dir)
        right = 8 + int(4 * lam) + (seed - 42)  # lambda 0: 8 (seed 42), 9 (43); lambda 1: 12, 13
        uids = [f"{seed}-{j}" for j in range(N)]
        ones = [1] * right + [0] * (N - right)
        write_finished_run(
            run_dir, uids, {0: eval_record([1] * 5 + [0] * 15), 2: eval_record(ones)}
        )
        return {}

    monkeypatch.setattr(simulation, "simulate", simulate)
    return calls


def _sweep(out: Path, *extra: str) -> int:
    return main(["sweep", "--grid", "spear.lambda_lose=0.0,1.0", "--output-dir", str(out), *extra])


def test_bad_grid_keys_and_values_stop_before_any_run(tmp_path, capsys, fake_simulate):
    out = tmp_path / "sweep"
    assert main(["sweep", "--grid", "spear.lamda_lose=0.1,0.3", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "spearfl: config error: unknown key 'spear.lamda_lose' in --grid "
        "spear.lamda_lose=0.1,0.3; did you mean 'spear.lambda_lose'?"
    )
    assert main(["sweep", "--grid", "spear.lambda_lose=0.1,-1", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "spear.lambda_lose must be >= 0, got -1.0 (in --grid spear.lambda_lose=0.1,-1)" in err
    assert main(["sweep", "--grid", "spear.lambda_lose=0.1,0.10", "--output-dir", str(out)]) == 2
    assert "'0.10' is the same value as an earlier one" in capsys.readouterr().err
    assert _sweep(out, "--seeds", "42,x") == 2
    assert "--seeds: 'x' is not an integer" in capsys.readouterr().err
    assert fake_simulate == [] and not out.exists()


def test_sweep_keeps_finished_cells_reruns_unfinished_ones_and_reports(
    tmp_path, capsys, fake_simulate
):
    out = tmp_path / "sweep"
    done = out / "spear.lambda_lose=0.0,seed=42"
    cut = out / "spear.lambda_lose=1.0,seed=42"
    write_finished_run(done, [f"42-{j}" for j in range(N)], {2: eval_record([1] * 8 + [0] * 12)})
    cut.mkdir(parents=True)
    (cut / "history.jsonl").write_text('{"round": 0}\n')
    assert cell_finished(done) and not cell_finished(cut)

    assert _sweep(out, "--seeds", "42,43") == 0
    assert [(lam, seed, path.name) for lam, seed, path in fake_simulate] == [
        (1.0, 42, "spear.lambda_lose=1.0,seed=42"),
        (0.0, 43, "spear.lambda_lose=0.0,seed=43"),
        (1.0, 43, "spear.lambda_lose=1.0,seed=43"),
    ]
    printed = capsys.readouterr().out
    assert "[1/4] spear.lambda_lose=0.0,seed=42: already finished; kept" in printed
    assert "[2/4] spear.lambda_lose=1.0,seed=42: unfinished; starting it again" in printed

    text = (out / SWEEP_MD).read_text(encoding="utf-8")
    assert "# Sweep over spear.lambda_lose; seeds 42, 43" in text
    assert "every run identical except `spear.lambda_lose` and `data.seed`" in text
    reference = next(line for line in text.splitlines() if line.startswith("| 0.0 |"))
    assert reference.startswith("| 0.0 | 0.425 [")  # 8/20 and 9/20
    assert reference.endswith("| 0.400, 0.450 | (reference) | - |")
    row = next(line for line in text.splitlines() if line.startswith("| 1.0 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1].startswith("0.625 [") and cells[3] == "0.600, 0.650"
    assert cells[4].startswith("+0.200 [+") and cells[5] == "1.000"
    assert (out / SWEEP_PNG).read_bytes()[:8] == PNG_MAGIC

    fake_simulate.clear()
    assert _sweep(out, "--seeds", "42,43") == 0  # everything finished: nothing runs again
    assert fake_simulate == []


@pytest.mark.slow
def test_a_real_sweep_on_the_tiny_model(tiny_model_dir, tmp_path):
    """Two cells of one seed, one round each: same start, their own lambda, one report."""
    out = tmp_path / "sweep"
    args = [
        "sweep",
        "--grid",
        "spear.lambda_lose=0.0,1.0",
        "--seeds",
        "42",
        "--output-dir",
        str(out),
    ]
    for item in tiny_run_overrides(tiny_model_dir, tmp_path / "unused", "fl.rounds=1"):
        args += ["--set", item]
    assert main(args) == 0
    names = ["spear.lambda_lose=0.0,seed=42", "spear.lambda_lose=1.0,seed=42"]
    summaries = [json.loads((out / n / "summary.json").read_text()) for n in names]
    configs = [(out / n / "config.yaml").read_text() for n in names]
    assert "lambda_lose: 0.0" in configs[0] and "lambda_lose: 1.0" in configs[1]
    histories = [
        [json.loads(line) for line in (out / n / "history.jsonl").read_text().splitlines()]
        for n in names
    ]
    assert histories[0][0]["eval"]["correct"] == histories[1][0]["eval"]["correct"]
    assert histories[0][1]["clients"] == histories[1][1]["clients"]
    text = (out / SWEEP_MD).read_text(encoding="utf-8")
    for value, summary in zip(("0.0", "1.0"), summaries):
        row = next(line for line in text.splitlines() if line.startswith(f"| {value} |"))
        assert row.startswith(f"| {value} | {summary['final_accuracy']:.3f} [")
