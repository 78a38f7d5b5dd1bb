"""The command line refuses bad configs before any work; the embedded task has no give-aways."""

from __future__ import annotations

from collections import Counter

from spearfl.cli.main import main
from spearfl.config import load_config
from spearfl.tasks.embedded import CATEGORIES, EmbeddedCategoryTask
from spearfl.tasks.registry import build_task


def test_unknown_key_stops_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--set", "spear.lamda_win=1.0", "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "spear.lamda_win" in err and "spear.lambda_win" in err
    assert not out.exists()


def test_bad_value_in_file_names_key_and_file(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("optim:\n  lr: fast\n")
    code = main(["run", str(config), "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "optim.lr" in err and "bad.yaml" in err


def test_existing_run_is_not_overwritten_silently(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "history.jsonl").write_text('{"round": 0}\n')
    assert main(["run", "--output-dir", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "history.jsonl").read_text() == '{"round": 0}\n'


def test_embedded_gold_answers_are_disjoint_and_options_have_no_giveaway():
    data = EmbeddedCategoryTask(seed=42).load()
    train_golds = {ex.gold for ex in data.train}
    eval_golds = {ex.gold for ex in data.eval}
    assert not train_golds & eval_golds
    category_of = {item: name for name, (_, items) in CATEGORIES.items() for item in items}
    for ex in data.train + data.eval:
        assert len(ex.options) == 4 and ex.gold in ex.options
        assert all(option == option.lower() for option in ex.options)
        # one member of the asked category, three distractors from three other categories
        cats = [category_of[o] for o in ex.options]
        assert cats.count(ex.label) == 1 and len(set(cats)) == 4
    # gold positions are balanced (no position give-away), categories too
    positions = Counter(ex.gold_index for ex in data.eval)
    assert min(positions.values()) >= 40 and max(positions.values()) <= 80
    assert set(Counter(ex.label for ex in data.eval).values()) == {20}


def test_embedded_task_is_deterministic_per_seed():
    a = EmbeddedCategoryTask(seed=1).load()
    b = EmbeddedCategoryTask(seed=1).load()
    c = EmbeddedCategoryTask(seed=2).load()
    assert a.eval == b.eval and a.train[:50] == b.train[:50]
    assert a.eval != c.eval


def test_max_eval_examples_cuts_the_embedded_eval_set_evenly():
    full = build_task(load_config(None, [])).load().eval
    cut = build_task(load_config(None, ["data.max_eval_examples=24"])).load().eval
    assert len(full) == 240 and len(cut) == 24
    assert {ex.uid for ex in cut} == {f"eval-{i}" for i in range(24)}
    by_uid = {ex.uid: ex for ex in full}
    assert all(ex == by_uid[ex.uid] for ex in cut)  # the same questions, not new ones
    assert Counter(ex.label for ex in cut) == {name: 2 for name in CATEGORIES}
