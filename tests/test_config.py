"""Tests for the typed experiment configuration (SPEC §7)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from spearfl.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_from_json,
    load_config,
    save_config,
)

# A config in the layout of the paper's own code: every SPEC §7 key, typical paper values.
PAPER_YAML = """\
output_dir: runs/arc_spear
algorithm:
  name: spear
model:
  model_name: Qwen/Qwen2.5-1.5B
  tokenizer_name: null
  trust_remote_code: false
  max_seq_len: 1024
  dtype: bf16
  device_map: auto
  load_in_4bit: false
  gradient_checkpointing: true
lora:
  r: 16
  alpha: 32
  dropout: 0.1
  bias: none
  last_n_layers: null
  target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
data:
  dataset: allenai/ai2_arc
  split: train
  eval_split: test
  eval_fraction: 0.02
  num_clients: 50
  dirichlet_alpha: 1.0
  dirichlet_num_classes: 4
  max_examples_per_client: 500
  seed: 42
  eval_every: 5
  eval_every_round_up_to: 10
fl:
  rounds: 100
  clients_per_round: 5
  local_rollout_steps: 160
  local_train_steps: 10
  aggregation: fedavg
  fedprox_mu: 0.0
  server_lr: 1e-2
  server_beta1: 0.9
  server_beta2: 0.99
  server_tau: 5e-3
gen:
  max_new_tokens_y0: 512
  max_new_tokens_y1: 512
  num_revisions: 2
  do_sample: true
  temperature: 0.8
  top_p: 0.95
  rollout_batch_size: 16
  eval_batch_size: 32
spear:
  lambda_win: 1.0
  lambda_lose: 0.1
  lambda_anchor: 0.0
  unlikelihood_margin: 0.3
  ema_decay: 0.0
  ul_answer_only: false
  ul_tail_tokens: 32
  ul_skip_math_ops: true
  max_lose_ratio: 4.0
grpo:
  num_generations: 4
  beta_kl: 0.02
  clip_range: 0.2
  normalize_advantage: true
  reward_scale: 1.0
  reward_clip: null
rltf_sd:
  gamma: 1.0
  sd_coeff: 0.1
  rl_coeff: 1.0
  early_termination: true
distill:
  temperature: 2.0
  kl_weight: 1.0
  anchor_weight: 0.0
  priv_max_chars: 2000
  feedback_max_chars: 800
  num_demos: 0
  demo_max_chars: 500
optim:
  lr: 1e-4
  weight_decay: 0.0
  batch_size: 8
  grad_accum_steps: 2
  max_grad_norm: 1.0
  warmup_ratio: 0.1
  lr_min: 5e-5
  use_warmup: true
  micro_batch_size: null
feedback:
  provider: oracle
  mc_hint_words: 3
hf:
  offline: true
  hf_home: null
  model_cache_dir: null
  dataset_cache_dir: null
  hub_cache_dir: null
"""


def _write(tmp_path: Path, text: str, name: str = "runs.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    return str(info.value)


def test_defaults_are_the_paper_settings() -> None:
    cfg = load_config()
    assert cfg == Config()
    assert cfg.output_dir == "runs/spear"
    assert cfg.algorithm.name == "spear"
    assert cfg.model.model_name == "smollm2-135m-instruct"
    assert cfg.model.dtype == "auto" and cfg.model.chat_template == "auto"
    assert cfg.lora.r == 16 and cfg.lora.alpha == 32.0 and isinstance(cfg.lora.alpha, float)
    assert cfg.lora.target_modules == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert cfg.data.eval_fraction == 0.02 and cfg.data.num_clients == 50
    assert cfg.data.min_examples_per_client == 10 and cfg.data.num_eval_examples == 240
    assert cfg.fl.rounds == 50 and cfg.fl.clients_per_round == 5
    assert cfg.fl.server_lr == 1e-2 and cfg.fl.server_tau == 5e-3
    assert cfg.gen.temperature == 0.8 and cfg.gen.top_p == 0.95 and cfg.gen.num_revisions == 2
    assert cfg.spear.lambda_lose == 0.1 and cfg.spear.unlikelihood_margin == 0.3
    assert cfg.spear.max_lose_ratio == 2.0
    assert cfg.grpo.num_generations == 4 and cfg.grpo.beta_kl == 0.02
    assert cfg.distill.priv_max_chars == 2000 and cfg.distill.feedback_max_chars == 800
    assert cfg.optim.lr == 5e-5 and cfg.optim.lr_min == 1e-5 and cfg.optim.warmup_ratio == 0.1
    assert cfg.feedback.mc_hint_words == 3 and cfg.feedback.mc_hint_style == "partial"
    assert cfg.hf.offline is True


def test_default_lists_are_not_shared() -> None:
    a, b = Config(), Config()
    a.lora.target_modules.append("lm_head")
    assert "lm_head" not in b.lora.target_modules


def test_paper_config_loads_unchanged(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, PAPER_YAML))
    assert cfg.output_dir == "runs/arc_spear"
    assert cfg.model.model_name == "Qwen/Qwen2.5-1.5B" and cfg.model.dtype == "bf16"
    assert cfg.model.device_map == "auto" and cfg.model.tokenizer_name is None
    assert cfg.fl.rounds == 100 and cfg.fl.local_rollout_steps == 160
    # YAML 1.1 reads '1e-4' (no dot) as a string; a float key still gets a float.
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.fl.server_tau == pytest.approx(5e-3)
    assert cfg.spear.ul_tail_tokens == 32 and cfg.spear.ul_skip_math_ops is True
    assert cfg.data.dirichlet_num_classes == 4 and cfg.data.eval_split == "test"
    # Keys the file leaves out keep their defaults.
    assert cfg.model.chat_template == "auto" and cfg.data.num_train_examples == 2000


def test_empty_file_and_empty_section_give_defaults(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "")) == Config()
    assert load_config(_write(tmp_path, "spear:\n", "b.yaml")) == Config()


def test_overrides_change_typed_values(tmp_path: Path) -> None:
    cfg = load_config(
        _write(tmp_path, "optim:\n  lr: 1.0e-4\n"),
        [
            "optim.lr=3e-4",
            "lora.target_modules=q_proj,v_proj",
            "fl.rounds=7",
            "gen.do_sample=false",
            "model.tokenizer_name=null",
            "output_dir=2024",
        ],
    )
    assert cfg.optim.lr == 0.0003 and isinstance(cfg.optim.lr, float)
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.fl.rounds == 7 and cfg.gen.do_sample is False
    assert cfg.model.tokenizer_name is None
    assert cfg.output_dir == "2024"  # a string-typed key keeps the text as written


def test_override_list_in_yaml_syntax_and_on_off_choices() -> None:
    cfg = load_config(None, ["lora.target_modules=[q_proj, o_proj]", "model.chat_template=off"])
    assert cfg.lora.target_modules == ["q_proj", "o_proj"]
    assert cfg.model.chat_template == "off"  # YAML 1.1 reads bare 'off' as false


def test_unknown_key_names_it_and_suggests(tmp_path: Path) -> None:
    path = _write(tmp_path, "spear:\n  lamda_win: 1.0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "unknown key 'spear.lamda_win'" in message
    assert "did you mean 'spear.lambda_win'?" in message
    assert str(path) in message
    assert info.value.key == "spear.lamda_win"


def test_unknown_key_from_override_and_misplaced_key() -> None:
    assert "did you mean 'spear.lambda_win'" in _error(["spear.lamda_win=1"])
    assert "did you mean 'grpo.num_generations'" in _error(["spear.num_generations=3"])
    with pytest.raises(ConfigError, match="unknown key 'lr'.*did you mean 'optim.lr'"):
        config_from_dict({"lr": 1e-4})


def test_unknown_section(tmp_path: Path) -> None:
    path = _write(tmp_path, "spaer:\n  lambda_win: 1.0\n")
    with pytest.raises(ConfigError, match="unknown section 'spaer'.*did you mean 'spear'") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_wrong_types() -> None:
    assert "data.num_clients must be an integer, got True (bool)" in _error(
        ["data.num_clients=true"]
    )
    assert "spear.lambda_win must be a number, got 'abc' (str)" in _error(["spear.lambda_win=abc"])
    assert "gen.do_sample must be true or false, got 1 (int)" in _error(["gen.do_sample=1"])
    assert "fl.rounds must be an integer, got 2.5 (float)" in _error(["fl.rounds=2.5"])
    assert "lora.target_modules must be a list of strings" in _error(["lora.target_modules=[1]"])
    assert "feedback.provider must not be null" in _error(["feedback.provider=null"])
    with pytest.raises(ConfigError, match="spear.lambda_win must be a number"):
        config_from_dict({"spear": {"lambda_win": False}})


def test_ints_are_stored_as_floats_for_float_keys() -> None:
    cfg = config_from_dict({"lora": {"alpha": 64}, "spear": {"max_lose_ratio": 4}})
    assert cfg.lora.alpha == 64.0 and isinstance(cfg.lora.alpha, float)
    assert isinstance(cfg.spear.max_lose_ratio, float)


def test_out_of_range_values() -> None:
    message = _error(["data.dirichlet_alpha=0"])
    assert "data.dirichlet_alpha must be > 0, got 0.0" in message
    assert "gen.top_p must be in (0, 1], got 1.5" in _error(["gen.top_p=1.5"])
    assert "lora.dropout must be in [0, 1)" in _error(["lora.dropout=1"])
    assert "grpo.num_generations must be >= 2" in _error(["grpo.num_generations=1"])
    assert "data.dirichlet_num_classes must be >= 2" in _error(["data.dirichlet_num_classes=1"])
    assert "lora.target_modules must not be empty" in _error(["lora.target_modules=[]"])
    assert "must be a finite number" in _error(["spear.lambda_win=.nan"])
    # Optional keys accept null even where a bound applies to set values.
    assert load_config(None, ["grpo.reward_clip=null"]).grpo.reward_clip is None


@pytest.mark.parametrize(
    ("eval_every", "up_to", "rounds"),
    [
        (0, 0, [9]),
        (1, 0, [1, 2, 3, 4, 5, 6, 7, 8, 9]),
        (4, 0, [4, 8, 9]),
        (0, 2, [1, 2, 9]),
    ],
)
def test_evaluated_rounds(eval_every: int, up_to: int, rounds: list[int]) -> None:
    """``data.eval_every: 0`` evaluates only the last round (round 0 always is)."""
    from spearfl.federation.server import should_evaluate

    cfg = load_config(
        None,
        ["fl.rounds=9", f"data.eval_every={eval_every}", f"data.eval_every_round_up_to={up_to}"],
    )
    assert [r for r in range(1, 10) if should_evaluate(cfg, r)] == rounds
    assert _error(["data.eval_every=-1"]) == (
        "data.eval_every must be >= 0, got -1 (in --set data.eval_every=-1)"
    )


def test_choice_errors() -> None:
    message = _error(["algorithm.name=ppo"])
    assert "algorithm.name" in message and "'ppo'" in message
    assert "spear, feedback_sft, grpo, opsd, rltf_sd" in message
    assert "fl.aggregation must be one of fedavg, fedadam, fedyogi" in _error(
        ["fl.aggregation=fedsgd"]
    )


def test_provider_none_is_the_old_name_of_verdict_only(tmp_path: Path) -> None:
    path = _write(tmp_path, "feedback:\n  provider: none\n")
    with pytest.warns(FutureWarning, match="verdict_only") as caught:
        cfg = load_config(path)
    assert "feedback.provider" in str(caught[0].message)
    assert cfg.feedback.provider == "verdict_only"
    out = tmp_path / "saved" / "config.yaml"
    save_config(cfg, out)
    assert "provider: verdict_only" in out.read_text()
    with pytest.warns(FutureWarning, match="verdict_only"):
        assert load_config(None, ["feedback.provider=none"]).feedback.provider == "verdict_only"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config(out).feedback.provider == "verdict_only"
        assert load_config(None, ["feedback.provider=verdict_only"]) == cfg


def test_cross_field_checks() -> None:
    message = _error(["fl.clients_per_round=60"])
    assert "fl.clients_per_round (60) must be <= data.num_clients (50)" in message
    assert "optim.lr_min" in _error(["optim.lr_min=1e-3"])
    assert "fl.min_clients" in _error(["fl.min_clients=6"])
    # The error points at the --set item that caused it, even on the other key of the pair.
    assert "--set data.num_clients=3" in _error(["data.num_clients=3"])


def test_malformed_overrides() -> None:
    for bad in ["optim.lr", "lr=1", "a.b.c=1", "=3", "spear.=1"]:
        with pytest.raises(ConfigError, match="malformed override"):
            load_config(None, [bad])


def test_structural_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping") as info:
        load_config(path)
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match="section 'spear' must be a mapping"):
        load_config(_write(tmp_path, "spear: 3\n", "b.yaml"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(_write(tmp_path, "spear: [\n", "c.yaml"))


def test_file_path_appears_in_value_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, "gen:\n  top_p: 1.5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "gen.top_p" in str(info.value) and str(path) in str(info.value)
    assert info.value.key == "gen.top_p" and info.value.source == str(path)


def test_round_trips(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, PAPER_YAML), ["model.chat_template=on"])
    as_dict = cfg.to_dict()
    assert isinstance(as_dict["spear"], dict)
    assert config_from_dict(as_dict) == cfg
    assert config_from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["optim"]["lr"] == pytest.approx(1e-4)
    assert config_from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    out = tmp_path / "saved" / "config.yaml"
    save_config(cfg, out)
    assert load_config(out) == cfg


def test_bad_json() -> None:
    with pytest.raises(ConfigError, match="invalid JSON"):
        config_from_json("{not json")


@pytest.mark.parametrize(
    ("item", "why"),
    [
        ("distill.feedback_max_chars=400", "never the feedback provider's hints"),
        ("distill.num_demos=3", "no worked demonstrations"),
        ("distill.demo_max_chars=100", "no demonstrations to cut"),
    ],
)
def test_keys_that_would_do_nothing_are_refused_with_the_reason(item: str, why: str) -> None:
    key, _, value = item.partition("=")
    message = _error([item])
    assert f"{key} = {value} would have no effect" in message and why in message
    assert "--set " + item in message  # located where it was written


def test_keys_that_would_do_nothing_accept_their_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, PAPER_YAML))  # the paper's file writes the defaults
    assert (cfg.distill.feedback_max_chars, cfg.distill.num_demos) == (800, 0)
    assert cfg.distill.demo_max_chars == 500
