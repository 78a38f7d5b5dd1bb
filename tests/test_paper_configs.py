"""configs/paper: one file per algorithm x task x model, in the paper's layout and settings."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
import yaml

from spearfl.config import ModelConfig, load_config
from spearfl.tasks.registry import TASKS

FOLDER = Path(__file__).resolve().parents[1] / "configs" / "paper"
PAPER = sorted(FOLDER.glob("*.yaml"))
ALGORITHMS = ["spear", "feedback_sft", "grpo", "opsd", "rltf_sd"]
TASK_NAMES = ["arc_challenge", "hellaswag", "math_mcqa", "strategy_qa"]
MODELS = {"qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B", "llama3.2-3b": "meta-llama/Llama-3.2-3B"}

SPEC7 = {  # the sections and keys of the paper's layout (SPEC §7)
    "algorithm": {"name"},
    "model": {"model_name", "tokenizer_name", "trust_remote_code", "max_seq_len", "dtype"}
    | {"device_map", "load_in_4bit", "gradient_checkpointing"},
    "lora": {"r", "alpha", "dropout", "bias", "last_n_layers", "target_modules"},
    "data": {"dataset", "split", "eval_split", "eval_fraction", "num_clients", "dirichlet_alpha"}
    | {"dirichlet_num_classes", "max_examples_per_client", "seed", "eval_every"}
    | {"eval_every_round_up_to"},
    "fl": {"rounds", "clients_per_round", "local_rollout_steps", "local_train_steps"}
    | {"aggregation", "fedprox_mu", "server_lr", "server_beta1", "server_beta2", "server_tau"},
    "gen": {"max_new_tokens_y0", "max_new_tokens_y1", "num_revisions", "do_sample"}
    | {"temperature", "top_p", "rollout_batch_size", "eval_batch_size"},
    "spear": {"lambda_win", "lambda_lose", "lambda_anchor", "unlikelihood_margin", "ema_decay"}
    | {"ul_answer_only", "ul_tail_tokens", "ul_skip_math_ops", "max_lose_ratio"},
    "grpo": {"num_generations", "beta_kl", "clip_range", "normalize_advantage", "reward_scale"}
    | {"reward_clip"},
    "rltf_sd": {"gamma", "sd_coeff", "rl_coeff", "early_termination"},
    "distill": {"temperature", "kl_weight", "anchor_weight", "priv_max_chars"}
    | {"feedback_max_chars", "num_demos", "demo_max_chars"},
    "optim": {"lr", "weight_decay", "batch_size", "grad_accum_steps", "max_grad_norm"}
    | {"warmup_ratio", "lr_min", "use_warmup", "micro_batch_size"},
    "feedback": {"provider", "mc_hint_words"},
    "hf": {"offline", "hf_home", "model_cache_dir", "dataset_cache_dir", "hub_cache_dir"},
}
OURS = {("model", "chat_template"), ("feedback", "mc_hint_style")}


def test_one_file_per_algorithm_task_and_model():
    expected = {
        f"{a}_{t}_{m}.yaml" for a, t, m in itertools.product(ALGORITHMS, TASK_NAMES, MODELS)
    }
    assert {p.name for p in PAPER} == expected
    readme = (FOLDER / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in expected)


@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_layout_is_the_papers_and_our_keys_are_marked(path):
    text = path.read_text()
    raw = yaml.safe_load(text)
    for section, values in raw.items():
        if section == "output_dir":
            continue
        for key in values:
            if (section, key) in OURS:
                line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{key}:"))
                assert "# ours" in line, f"{section}.{key} is ours and needs saying so"
            else:
                assert key in SPEC7[section], f"{section}.{key} is not a key of SPEC §7"
    # Left out so that the paper code's defaults hold (SPEC §8), and no GPU share is forced.
    assert {"gradient_checkpointing", "device_map", "dtype"}.isdisjoint(raw["model"])
    assert "target_modules" not in raw["lora"] and "dirichlet_num_classes" not in raw["data"]
    assert "num_gpus_per_client" not in raw["fl"]


def test_a_silent_file_means_gradient_checkpointing_on():
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    assert defaults["gradient_checkpointing"] is True


@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_paper_settings(path):
    algorithm, rest = next(
        (a, path.stem[len(a) + 1 :]) for a in ALGORITHMS if path.stem.startswith(a + "_")
    )
    task, model = rest.rsplit("_", 1)
    cfg = load_config(path)
    assert (cfg.algorithm.name, cfg.data.dataset, cfg.model.model_name) == (
        algorithm,
        task,
        MODELS[model],
    )
    assert cfg.data.dataset in TASKS and cfg.model.chat_template == "off"
    assert cfg.model.trust_remote_code is False and cfg.lora.last_n_layers in (28, 36)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 32.0, 0.1)
    assert (cfg.data.num_clients, cfg.data.dirichlet_alpha, cfg.data.seed) == (50, 1.0, 42)
    assert (cfg.fl.rounds, cfg.fl.clients_per_round, cfg.fl.local_rollout_steps) == (50, 5, 80)
    assert cfg.gen.temperature == 0.8 and cfg.gen.top_p == 0.95
    cot = task in ("math_mcqa", "strategy_qa")
    assert cfg.model.max_seq_len == (1024 if task == "strategy_qa" else 2048)
    assert cfg.gen.max_new_tokens_y0 == (512 if task == "math_mcqa" else 256)
    lrs = (1e-4, 5e-5) if task == "strategy_qa" else (5e-5, 1e-5)
    assert (cfg.optim.lr, cfg.optim.lr_min, cfg.optim.warmup_ratio) == (*lrs, 0.1)
    batches = {("spear", "math_mcqa"): (4, 4), ("feedback_sft", "math_mcqa"): (4, 4)}
    batches[("rltf_sd", "math_mcqa")] = (2, 8)
    expected = batches.get((algorithm, task), (16, 1))
    assert (cfg.optim.batch_size, cfg.optim.grad_accum_steps) == expected
    if algorithm in ("grpo", "rltf_sd"):
        assert cfg.grpo.num_generations == (2 if cot else 4)
        strategy_rltf = algorithm == "rltf_sd" and task == "strategy_qa"
        assert cfg.grpo.beta_kl == (0.1 if strategy_rltf else 0.02)
    if algorithm == "spear":
        assert cfg.spear.max_lose_ratio == (4.0 if cot else 2.0)
        tail = {"math_mcqa": 32, "strategy_qa": 24}.get(task, 0)
        assert cfg.spear.ul_tail_tokens == tail
        assert cfg.spear.ul_skip_math_ops == (task == "math_mcqa")
    if algorithm in ("spear", "feedback_sft", "rltf_sd") and task != "strategy_qa":
        assert cfg.feedback.mc_hint_style == "paper"
        assert cfg.feedback.mc_hint_words == (10 if task == "math_mcqa" else 3)
    if algorithm == "opsd":
        assert (cfg.distill.temperature, cfg.distill.priv_max_chars) == (2.0, 2000)
