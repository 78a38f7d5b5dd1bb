"""Every configuration in configs/paper loads, validates and names a task we implement."""

from __future__ import annotations

from pathlib import Path

import pytest

from spearfl.config import load_config
from spearfl.tasks.registry import TASKS

PAPER = sorted((Path(__file__).resolve().parents[1] / "configs" / "paper").glob("*.yaml"))


def test_there_is_one_config_per_task_and_model():
    assert len(PAPER) == 8


@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_paper_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.algorithm.name == "spear"
    assert cfg.data.dataset in TASKS
    assert cfg.model.model_name in {"Qwen/Qwen2.5-1.5B", "meta-llama/Llama-3.2-3B"}
    assert (cfg.lora.r, cfg.lora.alpha, cfg.data.num_clients) == (16, 32.0, 50)
    assert cfg.gen.temperature == 0.8 and cfg.gen.num_revisions == 2
    cot = cfg.data.dataset in {"stellaathena/math_mcqa", "ChilleD/StrategyQA"}
    assert cfg.spear.max_lose_ratio == (4.0 if cot else 2.0)
    if "math_mcqa" in cfg.data.dataset:
        assert cfg.spear.ul_tail_tokens == 32 and cfg.spear.ul_skip_math_ops
        assert cfg.gen.max_new_tokens_y0 == 512
    if "StrategyQA" in cfg.data.dataset:
        assert cfg.spear.ul_tail_tokens == 24 and (cfg.optim.lr, cfg.optim.lr_min) == (1e-4, 5e-5)
