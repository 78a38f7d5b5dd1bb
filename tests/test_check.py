"""``spearfl check`` and the checks every command makes before any work.

Files in the paper's layout (every SPEC §7 key) pass for each task x algorithm; a wrong dataset
name, a missing data path, a broken row, a model that is not there and a GPU request this
machine cannot meet each stop ``check`` and ``run`` with one line, before Ray starts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_paper_model_folder
from helpers import paper_data_folder
from spearfl.cli.main import main
from spearfl.preflight import PreflightError

ALGORITHMS = ["spear", "feedback_sft", "grpo", "opsd", "rltf_sd"]
TASKS = ["arc_challenge", "hellaswag", "math_mcqa", "strategy_qa"]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def paper_layout(algorithm: str, task: str, model: Path, data: Path, out: Path) -> dict:
    """A config with every key of SPEC §7, valued as in the paper's runs."""
    cot = task in ("math_mcqa", "strategy_qa")
    return {
        "output_dir": str(out),
        "algorithm": {"name": algorithm},
        "model": {
            "model_name": str(model),
            "tokenizer_name": None,
            "trust_remote_code": False,
            "max_seq_len": 1024 if task == "strategy_qa" else 2048,
            "dtype": "fp32",
            "device_map": None,
            "load_in_4bit": False,
            "gradient_checkpointing": True,
        },
        "lora": {
            "r": 16,
            "alpha": 32,
            "dropout": 0.1,
            "bias": "none",
            "last_n_layers": 36,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]
            + ["down_proj"],
        },
        "data": {
            "dataset": task,
            "path": str(data),
            "split": "train",
            "eval_split": "validation" if task == "hellaswag" else "test",
            "eval_fraction": 0.02,
            "num_clients": 4,
            "dirichlet_alpha": 1.0,
            "dirichlet_num_classes": 10,
            "max_examples_per_client": 500,
            "seed": 42,
            "eval_every": 5,
            "eval_every_round_up_to": 0,
        },
        "fl": {
            "rounds": 50,
            "clients_per_round": 2,
            "local_rollout_steps": 80,
            "local_train_steps": 5,
            "aggregation": "fedavg",
            "fedprox_mu": 0.0,
            "server_lr": 1e-2,
            "server_beta1": 0.9,
            "server_beta2": 0.99,
            "server_tau": 5e-3,
        },
        "gen": {
            "max_new_tokens_y0": 512 if task == "math_mcqa" else 256,
            "max_new_tokens_y1": 512 if task == "math_mcqa" else 256,
            "num_revisions": 2,
            "do_sample": True,
            "temperature": 0.8,
            "top_p": 0.95,
            "rollout_batch_size": 16,
            "eval_batch_size": 32,
        },
        "spear": {
            "lambda_win": 1.0,
            "lambda_lose": 0.1,
            "lambda_anchor": 0.0,
            "unlikelihood_margin": 0.3,
            "ema_decay": 0.0,
            "ul_answer_only": False,
            "ul_tail_tokens": {"math_mcqa": 32, "strategy_qa": 24}.get(task, 0),
            "ul_skip_math_ops": task == "math_mcqa",
            "max_lose_ratio": 4.0 if cot else 2.0,
        },
        "grpo": {
            "num_generations": 2 if cot else 4,
            "beta_kl": 0.1 if (task == "strategy_qa" and algorithm == "rltf_sd") else 0.02,
            "clip_range": 0.2,
            "normalize_advantage": True,
            "reward_scale": 1.0,
            "reward_clip": None,
        },
        "rltf_sd": {"gamma": 1.0, "sd_coeff": 0.1, "rl_coeff": 1.0, "early_termination": True},
        "distill": {
            "temperature": 2.0,
            "kl_weight": 1.0,
            "anchor_weight": 0.0,
            "priv_max_chars": 2000,
            "feedback_max_chars": 800,
            "num_demos": 0,
            "demo_max_chars": 500,
        },
        "optim": {
            "lr": 1e-4 if task == "strategy_qa" else 5e-5,
            "weight_decay": 0.0,
            "batch_size": 4 if task == "math_mcqa" else 16,
            "grad_accum_steps": 4 if task == "math_mcqa" else 1,
            "max_grad_norm": 1.0,
            "warmup_ratio": 0.1,
            "lr_min": 5e-5 if task == "strategy_qa" else 1e-5,
            "use_warmup": True,
            "micro_batch_size": None,
        },
        "feedback": {"provider": "oracle", "mc_hint_words": 3},
        "hf": {
            "offline": True,
            "hf_home": None,
            "model_cache_dir": None,
            "dataset_cache_dir": None,
            "hub_cache_dir": None,
        },
    }


def write_config(tmp_path: Path, data: dict, name: str = "paper.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def arc_config(shared_data, tmp_path, tmp_path_factory):
    """An ARC-Challenge SPEAR file in the paper's layout, on the tiny Qwen2 model."""
    model = tiny_paper_model_folder("qwen2", tmp_path_factory)
    data = shared_data / "arc_challenge"
    return paper_layout("spear", "arc_challenge", model, data, tmp_path / "run")


def one_line_failure(capsys, *argv: str) -> str:
    """Run ``spearfl ARGV``: it must fail with exit code 2 and exactly one line on stderr."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("spearfl: ") and "Traceback" not in err
    return err


EXPECTED_ROWS = {  # (training examples, eval examples, where eval came from)
    "arc_challenge": (1119, 299, "validation"),
    "hellaswag": (4900, 100, "last 100 rows of validation"),
    "math_mcqa": (40, 8, "test"),
    "strategy_qa": (1571, 32, "last 32 rows of train"),
}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_paper_layout_passes_check(
    algorithm, task, shared_data, tmp_path, tmp_path_factory, capsys
):
    family = "qwen2" if ALGORITHMS.index(algorithm) % 2 == 0 else "llama3"
    model = tiny_paper_model_folder(family, tmp_path_factory)
    data = paper_data_folder(task, shared_data, tmp_path)
    path = write_config(tmp_path, paper_layout(algorithm, task, model, data, tmp_path / "run"))

    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    train, evaluation, split = EXPECTED_ROWS[task]
    assert f"{train} training examples, {evaluation} for evaluation from {split}" in out
    assert f"algorithm: {algorithm}" in out and "prompt format: plain" in out
    assert "lora.last_n_layers = 36 covers all 2 decoder layers" in out
    assert "data.dirichlet_num_classes = 10 has no effect" in out
    assert ("math_mcqa: the hint's fallback quotes 10 words" in out) == (task == "math_mcqa")
    assert ("MATH-MCQA answer index 0" in out) == (task == "math_mcqa")
    assert ("GRPO prompts on StrategyQA" in out) == (algorithm == "grpo" and task == "strategy_qa")
    assert "model.trust_remote_code: here false" in out
    assert out.rstrip().endswith("ok: spearfl run would start with this configuration")
    assert not (tmp_path / "run").exists()  # check writes nothing


def test_resolved_config_is_printed_and_loads_back(arc_config, tmp_path, capsys):
    path = write_config(tmp_path, arc_config)
    assert main(["check", str(path), "--set", "fl.rounds=3"]) == 0
    out = capsys.readouterr().out
    resolved = yaml.safe_load(out.split("# what a run would use")[0])
    assert resolved["fl"]["rounds"] == 3 and resolved["data"]["dataset"] == "arc_challenge"
    assert resolved["model"]["chat_template"] == "auto"  # a key the file left out, resolved
    assert "feedback.mc_hint_style: here partial" in out


def test_wrong_dataset_name_is_one_line_for_check_and_run(arc_config, tmp_path, capsys):
    arc_config["data"]["dataset"] = "strategyqa2"
    path = write_config(tmp_path, arc_config)
    for command in ("check", "run"):
        err = one_line_failure(capsys, command, str(path))
        assert "data.dataset 'strategyqa2' is not a known dataset" in err
        assert "strategy_qa" in err and "arc_challenge" in err and "math_mcqa" in err
    assert not (tmp_path / "run").exists()


def test_missing_data_path(arc_config, tmp_path, capsys):
    arc_config["data"]["path"] = str(tmp_path / "nowhere")
    err = one_line_failure(capsys, "check", str(write_config(tmp_path, arc_config)))
    assert f"data.path {tmp_path / 'nowhere'} does not exist" in err


def test_broken_row_names_file_row_position_and_the_skip_key(
    arc_config, shared_data, tmp_path, capsys
):
    folder = tmp_path / "arc"
    folder.mkdir()
    lines = (shared_data / "arc_challenge" / "train.jsonl").read_text().splitlines()[:30]
    quote = lines[6].index('", "')
    lines[6] = lines[6][: quote + 1] + lines[6][quote + 2 :]  # row 7 loses a comma
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    shutil.copy(shared_data / "arc_challenge" / "validation.jsonl", folder)
    arc_config["data"]["path"] = str(folder)
    path = write_config(tmp_path, arc_config)

    err = one_line_failure(capsys, "run", str(path))
    # the parser stops at the quote that follows the missing comma: 1-based column quote + 3
    where = f"row 7: invalid JSON at column {quote + 3}: Expecting ',' delimiter"
    assert f"{folder / 'train.jsonl'}, {where}" in err
    assert "data.skip_bad_rows: true" in err
    assert main(["check", str(path), "--set", "data.skip_bad_rows=true"]) == 0
    out = capsys.readouterr().out
    assert "29 training examples, 299 for evaluation from validation; 1 malformed rows" in out


def test_skipped_rows_are_counted(arc_config, shared_data, tmp_path, capsys):
    folder = tmp_path / "arc"
    folder.mkdir()
    lines = (shared_data / "arc_challenge" / "train.jsonl").read_text().splitlines()[:30]
    (folder / "train.jsonl").write_text("\n".join([*lines, "{broken", "[1, 2]"]) + "\n")
    shutil.copy(shared_data / "arc_challenge" / "validation.jsonl", folder)
    arc_config["data"].update(path=str(folder), skip_bad_rows=True)
    assert main(["check", str(write_config(tmp_path, arc_config))]) == 0
    assert "30 training examples, 299 for evaluation from validation; 2 malformed rows skipped" in (
        capsys.readouterr().out
    )


@NO_GPU
def test_gpu_request_on_a_cpu_machine_is_one_line(arc_config, tmp_path, capsys):
    path = write_config(tmp_path, arc_config)
    for command in ("check", "run"):
        err = one_line_failure(capsys, command, str(path), "--set", "fl.num_gpus_per_client=1")
        assert "fl.num_gpus_per_client is 1 but this machine has no CUDA GPU" in err
        assert "set fl.num_gpus_per_client to 0" in err
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_whole_trace(arc_config, tmp_path):
    arc_config["data"]["path"] = str(tmp_path / "nowhere")
    path = write_config(tmp_path, arc_config)
    with pytest.raises(PreflightError, match="does not exist") as info:
        main(["check", str(path), "--debug"])
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_hub_model_not_cached_offline_is_one_line(arc_config, tmp_path, capsys):
    arc_config["model"]["model_name"] = "someone/not-cached-model"
    arc_config["hf"]["hf_home"] = str(tmp_path / "hf")
    err = one_line_failure(capsys, "run", str(write_config(tmp_path, arc_config)))
    assert (
        f"model.model_name 'someone/not-cached-model' is not in the local Hugging Face cache "
        f"({tmp_path / 'hf' / 'hub'}) and hf.offline is true" in err
    )
    assert "hf download someone/not-cached-model" in err and "hf.offline: false" in err


def test_model_folder_without_tokenizer(arc_config, tmp_path, tmp_path_factory, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    source = tiny_paper_model_folder("qwen2", tmp_path_factory)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(source / name, bare)
    arc_config["model"]["model_name"] = str(bare)
    err = one_line_failure(capsys, "check", str(write_config(tmp_path, arc_config)))
    assert f"model.model_name {bare}: the folder has no tokenizer" in err


def test_unused_distill_key_is_refused(arc_config, tmp_path, capsys):
    arc_config["distill"]["num_demos"] = 2
    err = one_line_failure(capsys, "check", str(write_config(tmp_path, arc_config)))
    assert "distill.num_demos = 2 would have no effect" in err and "leave it at 0" in err


def test_provider_settings_an_algorithm_does_not_read_get_a_note(arc_config, tmp_path, capsys):
    path = write_config(tmp_path, arc_config)
    assert main(["check", str(path), "--set", "algorithm.name=grpo"]) == 0
    assert "feedback.provider / feedback.hints have no effect" not in capsys.readouterr().out
    grpo_verdicts = ["--set", "algorithm.name=grpo", "--set", "feedback.provider=verdict_only"]
    assert main(["check", str(path), *grpo_verdicts]) == 0
    assert "feedback.provider / feedback.hints have no effect on grpo" in capsys.readouterr().out
    assert main(["check", str(path), "--set", "feedback.provider=human"]) == 0
    assert "clients train only on what people judged" in capsys.readouterr().out
