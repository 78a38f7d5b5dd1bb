"""Typed, validated experiment configuration in the YAML layout of the paper's code (SPEC §7).

The paper's code ignores keys it does not know, so a typo silently runs the wrong experiment.
Here every key is declared once, as a dataclass field whose type hint and ``metadata`` rules
drive validation; an unknown key, a wrong type or an out-of-range value is a ``ConfigError``
naming the dotted key (and the file or ``--set`` item it came from).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import operator
import os
import string
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import yaml

__all__ = [
    "AlgorithmConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DistillConfig",
    "FLConfig",
    "FeedbackConfig",
    "GRPOConfig",
    "GenConfig",
    "HFConfig",
    "LoggingConfig",
    "LoraConfig",
    "ModelConfig",
    "OptimConfig",
    "QAConfig",
    "RLTFSDConfig",
    "SpearConfig",
    "config_from_dict",
    "config_from_json",
    "load_config",
    "save_config",
]


class ConfigError(ValueError):
    """A bad configuration value; ``key`` is the dotted key, ``source`` where it came from."""

    def __init__(
        self,
        detail: str,
        key: str | None = None,
        source: str | None = None,
        suggestion: str | None = None,
    ):
        self.detail, self.key, self.source, self.suggestion = detail, key, source, suggestion
        if suggestion is not None:  # "unknown key 'x' in runs.yaml; did you mean 'y'?"
            message = f"{detail} in {source}{suggestion}"
        else:
            message = detail if source is None else f"{detail} (in {source})"
        super().__init__(message)

    def at(self, source: str) -> ConfigError:
        """The same error, located in ``source`` (a file path or a --set item)."""
        return ConfigError(self.detail, self.key, source, self.suggestion)


def _f(default: Any, **rules: Any) -> Any:
    """A field with range rules (ge/gt/le/lt), read back by ``_check_rules``; ``unused=reason``
    marks a key kept for the paper's layout that accepts only its default."""
    return field(default=default, metadata=rules)


def _default_targets() -> list[str]:
    return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class _Section:
    """Base of the section dataclasses: coerces and checks every field after construction."""

    SECTION: ClassVar[str] = ""
    MOVED: ClassVar[Mapping[str, str]] = {}
    """Keys this section no longer has, each with the message that says where it went."""

    def __init_subclass__(cls, section: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.SECTION = section

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            key = f"{self.SECTION}.{f.name}"
            value = _coerce(key, getattr(self, f.name), hints[f.name], f.metadata)
            if "unused" in f.metadata and value != f.default:
                raise ConfigError(
                    f"{key} = {value!r} would have no effect: {f.metadata['unused']}; "
                    f"leave it at {f.default!r} or remove it",
                    key,
                )
            setattr(self, f.name, value)


@dataclass
class AlgorithmConfig(_Section, section="algorithm"):
    name: Literal["spear", "grpo", "opsd", "rltf_sd", "feedback_sft"] = "spear"


@dataclass
class ModelConfig(_Section, section="model"):
    model_name: str = "smollm2-135m-instruct"
    tokenizer_name: str | None = None
    trust_remote_code: bool = False
    max_seq_len: int = _f(1024, ge=16)
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: fp32 on CPU, bf16 on GPU
    device_map: str | None = None
    load_in_4bit: bool = False
    gradient_checkpointing: bool = True  # as the paper's code: a file that says nothing means on
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: use the chat template when the tokenizer has one (whatever the model's name).
    chat_template: Literal["auto", "on", "off"] = "auto"


@dataclass
class LoraConfig(_Section, section="lora"):
    r: int = _f(16, ge=1)
    alpha: float = 32.0
    dropout: float = _f(0.1, ge=0, lt=1)
    bias: Literal["none", "all", "lora_only"] = "none"
    last_n_layers: int | None = _f(None, ge=1)  # None: every decoder layer
    target_modules: list[str] = field(default_factory=_default_targets, metadata={"nonempty": True})


@dataclass
class DataConfig(_Section, section="data"):
    dataset: str = "embedded"  # task name or Hugging Face id
    path: str | None = None  # local file or folder holding the dataset's rows
    config_name: str | None = None
    split: str = "train"
    eval_split: str | None = None
    eval_fraction: float = _f(0.02, gt=0, lt=1)
    num_clients: int = _f(50, ge=1)
    dirichlet_alpha: float = _f(1.0, gt=0)
    dirichlet_num_classes: int | None = _f(None, ge=2)
    max_examples_per_client: int = _f(500, ge=1)
    seed: int = 42
    eval_every: int = _f(5, ge=0)  # 0: only round 0 and the last round
    eval_every_round_up_to: int = _f(0, ge=0)
    max_eval_examples: int | None = _f(None, ge=1)
    min_examples_per_client: int = _f(10, ge=1)
    skip_bad_rows: bool = False
    num_train_examples: int = _f(2000, ge=1)  # size of procedurally generated tasks
    num_eval_examples: int = _f(240, ge=1)


QA_PLACEHOLDERS = ("question", "options")
"""What ``qa.prompt`` may name in braces."""


@dataclass
class QAConfig(_Section, section="qa"):
    """How ``data.dataset: qa`` reads a row of your own file (:mod:`spearfl.tasks.qa`).

    A section of its own rather than keys under ``data``: the mapping is only read by that task,
    and a flat section keeps ``--set qa.answer=...`` and the unknown-key messages working.
    """

    question: str = _f("question", nonempty=True)  # field holding the question text
    answer: str = _f("answer", nonempty=True)  # field holding the gold answer
    options: str | None = None  # field with a list of option texts or a {"A": text, ...} map
    rule: Literal["exact", "choice", "number", "regex"] = "exact"
    tolerance: float = _f(1e-6, ge=0)  # rule number: |declared - gold| <= tolerance
    # where the oracle's hint comes from: none, a field of the row, or the answer's opening
    hint: Literal["none", "field", "words", "chars"] = "none"
    hint_field: str | None = None  # hint: field
    hint_length: int = _f(3, ge=1)  # hint: words / chars (always fewer than the answer has)
    prompt: str = "{question}\n\n{options}"  # {options}: one "A. text" line per option
    marker: str = _f("Answer:", nonempty=True)  # what introduces the final answer
    instruction: str = ""  # how to answer, after the prompt; "": written from rule and marker
    label: str | None = None  # field the Dirichlet partition splits on (default: see the task)
    id: str | None = None  # field holding a row's id (default: <file name>:<row>)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            named = {name for _, name, _, _ in string.Formatter().parse(self.prompt) if name}
        except ValueError as exc:
            raise ConfigError(f"qa.prompt is not a valid template: {exc}", "qa.prompt") from None
        unknown = sorted(named - set(QA_PLACEHOLDERS))
        if unknown:
            raise ConfigError(
                f"qa.prompt names {{{unknown[0]}}}; it may name only "
                + ", ".join(f"{{{p}}}" for p in QA_PLACEHOLDERS),
                "qa.prompt",
            )
        if "question" not in named:
            raise ConfigError("qa.prompt must contain {question}", "qa.prompt")
        if self.options is not None and "options" not in named:
            raise ConfigError(
                f"qa.prompt must contain {{options}}: qa.options is {self.options!r}", "qa.prompt"
            )
        if self.rule == "choice" and self.options is None:
            raise ConfigError(
                "qa.rule 'choice' needs qa.options (the field of the options)", "qa.rule"
            )
        if self.hint == "field" and not self.hint_field:
            raise ConfigError("qa.hint 'field' needs qa.hint_field (the field to quote)", "qa.hint")
        if self.hint != "field" and self.hint_field is not None:
            raise ConfigError(
                f"qa.hint_field = {self.hint_field!r} would have no effect: qa.hint is "
                f"{self.hint!r}; set qa.hint: field or remove it",
                "qa.hint_field",
            )
        if self.rule == "regex" and self.hint in ("words", "chars"):
            raise ConfigError(
                f"qa.hint {self.hint!r} quotes the answer's opening, but with qa.rule 'regex' "
                "the answer is a pattern; use qa.hint: field or none",
                "qa.hint",
            )
        if self.rule != "number" and self.tolerance != 1e-6:
            raise ConfigError(
                f"qa.tolerance = {self.tolerance!r} would have no effect: qa.rule is "
                f"{self.rule!r}; leave it at 1e-06 or remove it",
                "qa.tolerance",
            )


@dataclass
class FLConfig(_Section, section="fl"):
    rounds: int = _f(50, ge=1)
    clients_per_round: int = _f(5, ge=1)
    local_rollout_steps: int = _f(80, ge=1)
    local_train_steps: int = _f(5, ge=0)
    aggregation: Literal["fedavg", "fedadam", "fedyogi"] = "fedavg"
    fedprox_mu: float = _f(0.0, ge=0)
    server_lr: float = _f(1e-2, gt=0)
    server_beta1: float = _f(0.9, ge=0, lt=1)
    server_beta2: float = _f(0.99, ge=0, lt=1)
    server_tau: float = _f(5e-3, gt=0)
    min_clients: int = _f(1, ge=1)
    round_timeout: float = _f(3600.0, gt=0)  # seconds a round waits for its clients' replies
    max_round_retries: int = _f(3, ge=0)  # extra client draws when too few replies are usable
    max_update_norm: float | None = _f(None, gt=0)  # reject a client whose update L2 norm exceeds
    num_cpus_per_client: float = _f(2.0, gt=0)
    # Share of a GPU each simulated client's Ray actor holds. None: what fits clients_per_round
    # on the visible GPUs (federation.simulation.gpu_share), 0 without CUDA.
    num_gpus_per_client: float | None = _f(None, ge=0)


@dataclass
class GenConfig(_Section, section="gen"):
    max_new_tokens_y0: int = _f(256, ge=1)
    max_new_tokens_y1: int = _f(256, ge=1)
    num_revisions: int = _f(2, ge=0)
    do_sample: bool = True
    temperature: float = _f(0.8, gt=0)
    top_p: float = _f(0.95, gt=0, le=1)
    rollout_batch_size: int = _f(16, ge=1)
    eval_batch_size: int = _f(32, ge=1)
    format_fix: bool = False
    eval_max_new_tokens: int | None = _f(None, ge=1)  # None: max_new_tokens_y0


@dataclass
class SpearConfig(_Section, section="spear"):
    lambda_win: float = _f(1.0, ge=0)
    lambda_lose: float = _f(0.1, ge=0)
    lambda_anchor: float = _f(0.0, ge=0)
    unlikelihood_margin: float = _f(0.3, ge=0, lt=1)
    ema_decay: float = _f(0.0, ge=0, lt=1)
    ul_answer_only: bool = False
    ul_tail_tokens: int = _f(0, ge=0)
    ul_skip_math_ops: bool = False
    max_lose_ratio: float = _f(2.0, ge=0)


@dataclass
class GRPOConfig(_Section, section="grpo"):
    num_generations: int = _f(4, ge=2)
    beta_kl: float = _f(0.02, ge=0)
    clip_range: float = _f(0.2, gt=0)
    normalize_advantage: bool = True
    reward_scale: float = 1.0
    reward_clip: float | None = _f(None, gt=0)


@dataclass
class RLTFSDConfig(_Section, section="rltf_sd"):
    """RLTF-SD's own weights; its group size, KL weight and reward scale are GRPO's (SPEC §8)."""

    MOVED: ClassVar[Mapping[str, str]] = {
        "num_generations": "the paper's RLTF-SD reads its group size N from "
        "grpo.num_generations; set that instead",
        "beta_kl": "the paper's RLTF-SD reads its KL weight from grpo.beta_kl; set that instead",
    }

    gamma: float = _f(1.0, ge=0)
    sd_coeff: float = 0.1
    rl_coeff: float = 1.0
    early_termination: bool = True


@dataclass
class DistillConfig(_Section, section="distill"):
    temperature: float = _f(2.0, gt=0)
    kl_weight: float = _f(1.0, ge=0)
    anchor_weight: float = _f(0.0, ge=0)
    priv_max_chars: int = _f(2000, ge=1)
    # Keys of the paper's layout that OPSD as SPEC §4 defines it has no use for: only their
    # defaults are accepted, since any other value would silently change nothing.
    feedback_max_chars: int = _f(
        800,
        ge=1,
        unused="OPSD's teacher reads the task's privileged text (cut at distill.priv_max_chars), "
        "never the feedback provider's hints, so there is no feedback to cut",
    )
    num_demos: int = _f(
        0,
        ge=0,
        unused="OPSD (SPEC §4) puts no worked demonstrations in the teacher's context; "
        "adding them would make it a different baseline",
    )
    demo_max_chars: int = _f(
        500, ge=1, unused="there are no demonstrations to cut (distill.num_demos is always 0)"
    )
    # Also distill the position where the student stopped (its EOS). Off: after a wrong answer
    # the teacher, who read the gold answer, wants to go on, and matching it there teaches the
    # student never to stop (measured: valid answers fell to 0% in 3 rounds on the demo task).
    distill_eos: bool = False


@dataclass
class OptimConfig(_Section, section="optim"):
    lr: float = _f(5e-5, gt=0)
    weight_decay: float = _f(0.0, ge=0)
    batch_size: int = _f(16, ge=1)
    grad_accum_steps: int = _f(1, ge=1)
    max_grad_norm: float = _f(1.0, gt=0)
    warmup_ratio: float = _f(0.1, ge=0, lt=1)
    lr_min: float = _f(1e-5, ge=0)
    use_warmup: bool = True
    # Rows (prompt + completion sequences) per forward pass, for every algorithm and every pass:
    # SPEAR's wins and losses alike, GRPO's and RLTF-SD's samples, OPSD's student rows (its
    # teacher pass takes the same rows). Same maths, less memory. None: as many rows as keep
    # rows x longest completion x vocabulary within 2**28 logits (1 GiB in float32).
    micro_batch_size: int | None = _f(None, ge=1)


@dataclass
class FeedbackConfig(_Section, section="feedback"):
    # human: SPEAR trains on what people said on the device's feedback page (spearfl serve).
    provider: Literal["oracle", "none", "human"] = "oracle"
    mc_hint_words: int = _f(3, ge=1)
    # partial: hint stays shorter than the option; paper: the paper's exact first-N-words rule.
    mc_hint_style: Literal["partial", "paper"] = "partial"
    # false: revisions are told only that the answer was wrong (the control that measures
    # how much the hint itself adds).
    hints: bool = True
    # where each device keeps its feedback inbox (client-N/feedback.sqlite); "" = OUTPUT/devices
    store_dir: str = ""


@dataclass
class HFConfig(_Section, section="hf"):
    offline: bool = True
    hf_home: str | None = None
    model_cache_dir: str | None = None
    dataset_cache_dir: str | None = None
    hub_cache_dir: str | None = None


REPORTERS = ("tensorboard", "wandb")
"""Live views a run can write to (``logging.report_to``)."""


@dataclass
class LoggingConfig(_Section, section="logging"):
    """Where a run reports its rounds live, besides ``history.jsonl`` and the terminal."""

    report_to: list[str] = field(default_factory=list)  # tensorboard, wandb

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [name for name in self.report_to if name not in REPORTERS]
        if unknown:
            raise ConfigError(
                f"logging.report_to: unknown reporter {unknown[0]!r}; known: "
                f"{', '.join(REPORTERS)}",
                "logging.report_to",
            )
        self.report_to = list(dict.fromkeys(self.report_to))


# Pairs (small, big) that must satisfy small <= big once every section is valid.
HUMAN_ALGORITHMS = ("spear", "feedback_sft")
"""Algorithms that can learn from stored human feedback (wins and losses, no resampling)."""

_ORDERED = (
    ("fl.clients_per_round", "data.num_clients"),
    ("optim.lr_min", "optim.lr"),
    ("fl.min_clients", "fl.clients_per_round"),
)


@dataclass
class Config:
    """The whole experiment; one attribute per YAML section."""

    output_dir: str = "runs/spear"
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    gen: GenConfig = field(default_factory=GenConfig)
    spear: SpearConfig = field(default_factory=SpearConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    rltf_sd: RLTFSDConfig = field(default_factory=RLTFSDConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    hf: HFConfig = field(default_factory=HFConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        self.output_dir = _coerce("output_dir", self.output_dir, str, {})
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"section '{name}' must be a {cls.__name__}", name)
        for small, big in _ORDERED:
            a, b = self.get(small), self.get(big)
            if a > b:
                raise ConfigError(f"{small} ({a!r}) must be <= {big} ({b!r})", small)
        if self.feedback.provider == "human" and self.algorithm.name not in HUMAN_ALGORITHMS:
            raise ConfigError(
                f"feedback.provider 'human' trains {' or '.join(HUMAN_ALGORITHMS)} only, "
                f"not {self.algorithm.name!r}",
                "feedback.provider",
            )

    def device_dir(self, client_id: int) -> Path:
        """Where client ``client_id`` keeps its feedback inbox and the adapter it last got."""
        root = Path(self.feedback.store_dir or Path(self.output_dir) / "devices")
        return root / f"client-{client_id}"

    def get(self, dotted: str) -> Any:
        """Value of a dotted key such as ``'optim.lr'``."""
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict that ``config_from_dict`` turns back into an equal Config."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """YAML in the same layout ``load_config`` reads, for saving next to a run."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self) -> str:
        """Compact JSON, used to ship the config to clients."""
        return json.dumps(self.to_dict())


_SECTIONS: dict[str, type[_Section]] = {
    f.name: f.default_factory
    for f in fields(Config)
    if f.name != "output_dir"  # type: ignore[misc]
}
_ALL_KEYS = ["output_dir"] + [
    f"{name}.{f.name}"
    for name, cls in _SECTIONS.items()
    for f in fields(cls)  # type: ignore[arg-type]
]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _coerce(key: str, value: Any, hint: Any, rules: Mapping[str, Any]) -> Any:
    """Check ``value`` against the type hint and range rules; return it in canonical form."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        raise ConfigError(f"{key} must not be null", key)
    if origin is Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(args):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        if isinstance(value, bool) or value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(args)}, got {value!r}", key)
        return value
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads '3e-4' (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}", key)
    elif origin is list:
        if isinstance(value, str):  # comma-separated, as written after --set
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings, got {_show(value)}", key)
        value = list(value)
    elif not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        what = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
        raise ConfigError(f"{key} must be {what[hint]}, got {_show(value)}", key)
    _check_rules(key, value, rules)
    return value


_SYMBOLS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_COMPARE = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}


def _check_rules(key: str, value: Any, rules: Mapping[str, Any]) -> None:
    """Apply a field's ``metadata`` rules: bounds (ge/gt/le/lt) and ``nonempty``."""
    if rules.get("nonempty") and not value:
        raise ConfigError(f"{key} must not be empty", key)
    if all(cmp(value, rules[name]) for name, cmp in _COMPARE.items() if name in rules):
        return
    low, high = rules.get("ge", rules.get("gt")), rules.get("le", rules.get("lt"))
    if low is not None and high is not None:
        left, right = "[" if "ge" in rules else "(", "]" if "le" in rules else ")"
        allowed = f"in {left}{low:g}, {high:g}{right}"
    else:
        allowed = " and ".join(
            f"{sym} {rules[name]:g}" for name, sym in _SYMBOLS.items() if name in rules
        )
    raise ConfigError(f"{key} must be {allowed}, got {value!r}", key)


def _unknown(key: str, where: str) -> ConfigError:
    """Unknown-key error: where a moved key went, else the closest known key as a suggestion."""
    section, _, leaf = key.partition(".")
    moved = _SECTIONS[section].MOVED.get(leaf) if section in _SECTIONS else None
    if moved is not None:
        return ConfigError(f"'{key}' is not a key: {moved}", key, where)
    leaf_matches = [k for k in _ALL_KEYS if k.rsplit(".", 1)[-1] == key]  # e.g. 'lr' at top
    guess = leaf_matches or difflib.get_close_matches(key, _ALL_KEYS + list(_SECTIONS), n=1)
    hint = f"; did you mean '{guess[0]}'?" if guess else ""
    kind = "key" if "." in key or leaf_matches else "section"
    return ConfigError(f"unknown {kind} '{key}'", key, where, hint)


def _build(data: Any, source: str, origins: Mapping[str, str]) -> Config:
    """Validate raw nested data; ``origins`` maps dotted keys set by --set to that item."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"the top level must be a mapping of sections, got {_show(data)}", None, source
        )
    kwargs: dict[str, Any] = {}
    for name, section in data.items():
        name = str(name)
        where = origins.get(name, source)
        if name == "output_dir":
            kwargs[name] = section
            continue
        cls = _SECTIONS.get(name)
        if cls is None:
            raise _unknown(name, where)
        if section is None:  # 'spear:' with nothing under it
            section = {}
        if not isinstance(section, Mapping):
            raise ConfigError(
                f"section '{name}' must be a mapping of keys, got {_show(section)}", name, where
            )
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        for key in section:
            if key not in known:
                raise _unknown(f"{name}.{key}", origins.get(f"{name}.{key}", source))
        kwargs[name] = _located(cls, section, source, origins)
    return _located(Config, kwargs, source, origins)


def _located(cls: type, values: Mapping[str, Any], source: str, origins: Mapping[str, str]) -> Any:
    """``cls(**values)``, with any ConfigError located where its key was written."""
    try:
        return cls(**values)
    except ConfigError as err:
        # A cross-field error is located at whichever of its two keys came from --set.
        keys = [err.key] + [big for small, big in _ORDERED if small == err.key]
        where = next((origins[k] for k in keys if k in origins), source)
        raise err.at(where) from None


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Build a validated Config from nested plain data (e.g. ``Config.to_dict()``)."""
    return _build(data, source, {})


def config_from_json(text: str) -> Config:
    """Inverse of ``Config.to_json``; clients rebuild the server's config this way."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON: {exc}", None, "<json>") from None
    return _build(data, "<json>", {})


def _override_value(key: str, text: str) -> Any:
    """Parse a --set value with YAML; a str-typed key keeps the raw text (e.g. '2024', or a
    prompt template such as 'Q: {question}' that YAML would read as a mapping or reject)."""
    section, _, name = key.rpartition(".")
    owner = _SECTIONS.get(section, Config) if section else Config
    hint = _hints(owner).get(name)
    if typing.get_origin(hint) in (Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        if hint is str:
            return text.strip()
        raise ConfigError(
            f"cannot parse value of {key}: {exc}", key, f"--set {key}={text}"
        ) from None
    if value is not None and not isinstance(value, str) and hint is str:
        return text.strip()
    return value


def _apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, str]:
    """Set each 'section.key=value' in ``data``; return where each overridden key came from."""
    origins: dict[str, str] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not all(parts) or len(parts) > 2 or (len(parts) == 1 and key != "output_dir"):
            raise ConfigError(
                f"malformed override {item!r}: expected 'section.key=value'", key or None, "--set"
            )
        value = _override_value(key, text)
        origins[key] = f"--set {item}"
        if parts[0] not in data:  # an unknown section is then reported at this item
            origins.setdefault(parts[0], origins[key])
        if len(parts) == 1:
            data[key] = value
            continue
        section = data.get(parts[0])
        if section is None:
            section = data[parts[0]] = {}
        if isinstance(section, dict):  # a non-mapping section is reported by _build
            section[parts[1]] = value
    return origins


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()
) -> Config:
    """Load a YAML config (None: all defaults), apply ``--set`` overrides, validate everything."""
    source = "<defaults>"
    raw: Any = {}
    if path is not None:
        source = os.fspath(path)
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file: {exc.strerror}", None, source) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML: {exc}", None, source) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"the top level must be a mapping of sections, got {_show(raw)}", None, source
        )
    data = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    origins = _apply_overrides(data, overrides)
    return _build(data, source, origins)


def save_config(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write ``cfg`` as YAML (creating parent folders) so a run can be repeated exactly."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(cfg.to_yaml(), encoding="utf-8")
