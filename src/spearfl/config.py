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
import warnings
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
    "FLConfig",
    "FeedbackConfig",
    "GenConfig",
    "HFConfig",
    "LoggingConfig",
    "LoraConfig",
    "ModelConfig",
    "OptimConfig",
    "QAConfig",
    "Section",
    "config_from_dict",
    "config_from_json",
    "all_sections",
    "load_config",
    "save_config",
    "setting",
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


def setting(default: Any, doc: str = "", **rules: Any) -> Any:
    """A config key: its default, what it does (``doc``, shown in the configuration reference)
    and its range rules (ge/gt/le/lt, ``nonempty``), read back by ``_check_rules``;
    ``unused=reason`` marks a key kept for the paper's layout that accepts only its default."""
    return field(default=default, metadata={"doc": doc, **rules} if doc else rules)


def _default_targets() -> list[str]:
    return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Section:
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
class AlgorithmConfig(Section, section="algorithm"):
    """Which client update runs. The choices are the registered algorithms
    (:mod:`spearfl.algorithms.registry`): the shipped ones, and those ``module`` adds."""

    name: str = setting("spear", doc="the client update: a registered algorithm's name")
    module: str | None = setting(
        None,
        doc="a module (dotted name, or a .py file relative to the config) that registers more "
        "algorithms, imported before the rest of the config is read",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        from spearfl.algorithms.registry import algorithm_spec, load_module

        if self.module is not None:
            self.module = load_module(self.module)
        algorithm_spec(self.name)  # an unknown name is a ConfigError naming the choices


@dataclass
class ModelConfig(Section, section="model"):
    """The base model and how it is loaded."""

    model_name: str = setting(
        "smollm2-135m-instruct", doc="the embedded model, a Hugging Face id or a local folder"
    )
    tokenizer_name: str | None = setting(None, doc="another tokenizer (none: the model's own)")
    trust_remote_code: bool = setting(False, doc="run code shipped with the model's files")
    max_seq_len: int = setting(1024, doc="longest prompt plus answer, in tokens", ge=16)
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = setting(
        "auto", doc="weights' precision (auto: fp32 on CPU, bf16 on GPU)"
    )
    device_map: str | None = setting(None, doc="passed to transformers' from_pretrained")
    load_in_4bit: bool = setting(False, doc="4-bit base weights (bitsandbytes, GPU only)")
    gradient_checkpointing: bool = setting(
        True, doc="recompute activations in the backward pass (on, as the paper's code)"
    )
    device: Literal["auto", "cpu", "cuda"] = setting("auto", doc="auto: CUDA when there is one")
    chat_template: Literal["auto", "on", "off"] = setting(
        "auto", doc="auto: the chat template when the tokenizer has one; off: plain prompts"
    )


@dataclass
class LoraConfig(Section, section="lora"):
    """The adapter that is trained and federated (PEFT's LoRA)."""

    r: int = setting(16, doc="rank", ge=1)
    alpha: float = setting(32.0, doc="scale numerator (the update is scaled by alpha / r)")
    dropout: float = setting(0.1, doc="dropout on the adapter's input", ge=0, lt=1)
    bias: Literal["none", "all", "lora_only"] = setting("none", doc="which biases train")
    last_n_layers: int | None = setting(
        None, doc="adapt only the last N decoder layers (none: every layer)", ge=1
    )
    target_modules: list[str] = field(
        default_factory=_default_targets,
        metadata={"nonempty": True, "doc": "the projections that get an adapter"},
    )


@dataclass
class DataConfig(Section, section="data"):
    """The task, its split between clients, and the evaluation."""

    dataset: str = setting(
        "embedded",
        doc="embedded, arc_challenge, hellaswag, strategy_qa, math_mcqa (or their Hugging Face "
        "ids), or qa: your own rows",
    )
    path: str | None = setting(None, doc="local file or folder holding the dataset's rows")
    config_name: str | None = setting(None, doc="the dataset's configuration (Hugging Face)")
    split: str = setting("train", doc="the split clients train on")
    eval_split: str | None = setting(
        None, doc="the split evaluated (none: data.eval_fraction of the training split)"
    )
    eval_fraction: float = setting(
        0.02, doc="share held out for evaluation when there is no eval split", gt=0, lt=1
    )
    num_clients: int = setting(50, doc="devices the data is split between", ge=1)
    dirichlet_alpha: float = setting(
        1.0, doc="Dirichlet concentration of the label split (small: more skewed)", gt=0
    )
    dirichlet_num_classes: int | None = setting(
        None, doc="pool labels into this many classes for the split (none: one per label)", ge=2
    )
    max_examples_per_client: int = setting(500, doc="examples a client keeps at most", ge=1)
    seed: int = setting(42, doc="the split, client draws, sampling and evaluation questions")
    eval_every: int = setting(
        5, doc="evaluate every N rounds (0: only round 0 and the last round)", ge=0
    )
    eval_every_round_up_to: int = setting(0, doc="also evaluate every round up to this one", ge=0)
    max_eval_examples: int | None = setting(None, doc="evaluate at most this many", ge=1)
    min_examples_per_client: int = setting(
        10, doc="the split is redrawn until every client has this many", ge=1
    )
    skip_bad_rows: bool = setting(
        False, doc="skip malformed rows and over-long prompts (counted) instead of stopping"
    )
    num_train_examples: int = setting(
        2000, doc="size of a procedurally generated task's training set", ge=1
    )
    num_eval_examples: int = setting(
        240, doc="size of a procedurally generated task's evaluation set", ge=1
    )


QA_PLACEHOLDERS = ("question", "options")
"""What ``qa.prompt`` may name in braces."""


@dataclass
class QAConfig(Section, section="qa"):
    """How ``data.dataset: qa`` reads a row of your own file (:mod:`spearfl.tasks.qa`).

    A section of its own rather than keys under ``data``: the mapping is only read by that task,
    and a flat section keeps ``--set qa.answer=...`` and the unknown-key messages working.
    """

    question: str = setting("question", doc="field holding the question text", nonempty=True)
    answer: str = setting("answer", doc="field holding the gold answer", nonempty=True)
    options: str | None = setting(
        None, doc='field with a list of option texts or a {"A": text, ...} map'
    )
    rule: Literal["exact", "choice", "number", "regex"] = setting(
        "exact",
        doc="exact (equal after normalising), choice (the option letter), number (within "
        "qa.tolerance), regex (the gold answer is a pattern)",
    )
    tolerance: float = setting(1e-6, doc="rule number: |declared - gold| <= tolerance", ge=0)
    hint: Literal["none", "field", "words", "chars"] = setting(
        "none", doc="where the oracle's hint comes from: a field, or the answer's opening"
    )
    hint_field: str | None = setting(None, doc="hint field: the field quoted")
    hint_length: int = setting(
        3, doc="hint words or chars: how many (always fewer than the answer has)", ge=1
    )
    prompt: str = setting(
        "{question}\n\n{options}", doc='the prompt; {options}: one "A. text" line per option'
    )
    marker: str = setting("Answer:", doc="what introduces the final answer", nonempty=True)
    instruction: str = setting(
        "", doc="how to answer, after the prompt (empty: written from rule and marker)"
    )
    label: str | None = setting(
        None, doc="field the Dirichlet split is drawn on (none: the gold answer or option)"
    )
    id: str | None = setting(None, doc="field holding a row's id (none: <file name>:<row>)")

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
class FLConfig(Section, section="fl"):
    """Rounds, client draws and aggregation."""

    rounds: int = setting(50, doc="federated rounds", ge=1)
    clients_per_round: int = setting(5, doc="clients drawn each round", ge=1)
    local_rollout_steps: int = setting(
        80, doc="prompts a client answers per round (SPEAR, feedback-SFT, OPSD)", ge=1
    )
    local_train_steps: int = setting(5, doc="optimiser steps a client takes per round", ge=0)
    aggregation: Literal["fedavg", "fedadam", "fedyogi"] = setting(
        "fedavg", doc="server update: weighted average, or Adam / Yogi on the average's change"
    )
    fedprox_mu: float = setting(0.0, doc="FedProx pull to the received adapter (0: off)", ge=0)
    server_lr: float = setting(1e-2, doc="fedadam, fedyogi: server learning rate", gt=0)
    server_beta1: float = setting(0.9, doc="fedadam, fedyogi: first moment decay", ge=0, lt=1)
    server_beta2: float = setting(0.99, doc="fedadam, fedyogi: second moment decay", ge=0, lt=1)
    server_tau: float = setting(5e-3, doc="fedadam, fedyogi: adaptivity epsilon", gt=0)
    min_clients: int = setting(1, doc="usable replies a round needs to aggregate", ge=1)
    round_timeout: float = setting(
        3600.0, doc="seconds a round waits for its clients' replies", gt=0
    )
    max_round_retries: int = setting(
        3, doc="extra client draws when too few replies are usable", ge=0
    )
    max_update_norm: float | None = setting(
        None, doc="reject a client whose update's L2 norm exceeds this (none: no check)", gt=0
    )
    num_cpus_per_client: float = setting(2.0, doc="CPUs each simulated client holds", gt=0)
    num_gpus_per_client: float | None = setting(
        None,
        doc="share of a GPU each simulated client holds (none: what fits clients_per_round on "
        "the visible GPUs, 0 without CUDA)",
        ge=0,
    )


@dataclass
class GenConfig(Section, section="gen"):
    """Generation: answers, revisions and the evaluation's greedy answers."""

    max_new_tokens_y0: int = setting(256, doc="new tokens of a first answer", ge=1)
    max_new_tokens_y1: int = setting(256, doc="new tokens of a revision", ge=1)
    num_revisions: int = setting(2, doc="revisions of a wrong answer at most", ge=0)
    do_sample: bool = setting(True, doc="sample rollouts (false: greedy)")
    temperature: float = setting(0.8, doc="sampling temperature", gt=0)
    top_p: float = setting(0.95, doc="nucleus sampling's probability mass", gt=0, le=1)
    rollout_batch_size: int = setting(16, doc="prompts generated together", ge=1)
    eval_batch_size: int = setting(32, doc="evaluation questions answered together", ge=1)
    format_fix: bool = setting(False, doc="ask once more when an answer has no valid final answer")
    eval_max_new_tokens: int | None = setting(
        None, doc="new tokens of an evaluation answer (none: max_new_tokens_y0)", ge=1
    )


@dataclass
class OptimConfig(Section, section="optim"):
    """The client's optimiser (AdamW) and learning-rate schedule."""

    lr: float = setting(5e-5, doc="peak learning rate", gt=0)
    weight_decay: float = setting(0.0, doc="AdamW weight decay", ge=0)
    batch_size: int = setting(
        16, doc="rows per micro-step (SPEAR: this many wins and this many losses)", ge=1
    )
    grad_accum_steps: int = setting(1, doc="micro-steps per optimiser step", ge=1)
    max_grad_norm: float = setting(1.0, doc="gradient clipping norm", gt=0)
    warmup_ratio: float = setting(0.1, doc="share of the rounds spent warming up", ge=0, lt=1)
    lr_min: float = setting(1e-5, doc="learning rate at the last round (cosine decay)", ge=0)
    use_warmup: bool = setting(True, doc="linear warm-up before the decay")
    micro_batch_size: int | None = setting(
        None,
        doc="rows (prompt + completion sequences) per forward pass, for every algorithm and "
        "pass (SPEAR's wins and losses, GRPO's and RLTF-SD's samples, OPSD's student rows and "
        "the teacher's same rows): the same maths in less memory (none: as many rows as keep "
        "rows x longest completion x vocabulary within 2^28 logits)",
        ge=1,
    )


@dataclass
class FeedbackConfig(Section, section="feedback"):
    """Who judges the answers, and what a hint may say."""

    provider: Literal["oracle", "verdict_only", "human"] = setting(
        "oracle",
        doc="oracle: the dataset's gold fields judge and hint; verdict_only: the oracle says only "
        "right or wrong (no hints, no SPEAR revisions; `none` is its old name); human: what "
        "people said on the device's feedback page (spearfl serve)",
    )
    mc_hint_words: int = setting(3, doc="words of the right option a hint may quote", ge=1)
    mc_hint_style: Literal["partial", "paper"] = setting(
        "partial",
        doc="partial: the hint stays shorter than the option; paper: the paper's first-N-words",
    )
    hints: bool = setting(
        True, doc="false: revisions are told only that the answer was wrong (the hint control)"
    )
    store_dir: str = setting(
        "", doc="where each device keeps its feedback inbox (empty: <output_dir>/devices)"
    )

    def __post_init__(self) -> None:
        if self.provider == "none":  # the old name of verdict_only: the oracle still judges
            warnings.warn(
                "feedback.provider: 'none' is deprecated (the oracle still judges every answer); "
                "use 'verdict_only'",
                FutureWarning,
                stacklevel=2,
            )
            self.provider = "verdict_only"
        super().__post_init__()


@dataclass
class HFConfig(Section, section="hf"):
    """The Hugging Face libraries' caches and network use."""

    offline: bool = setting(True, doc="never contact the Hub")
    hf_home: str | None = setting(None, doc="root of the caches (the libraries' HF_HOME)")
    model_cache_dir: str | None = setting(None, doc="models (none: the hub cache)")
    dataset_cache_dir: str | None = setting(None, doc="datasets (none: <hf_home>/datasets)")
    hub_cache_dir: str | None = setting(None, doc="the hub cache (none: <hf_home>/hub)")


REPORTERS = ("tensorboard", "wandb")
"""Live views a run can write to (``logging.report_to``)."""


@dataclass
class LoggingConfig(Section, section="logging"):
    """Where a run reports its rounds live, besides ``history.jsonl`` and the terminal."""

    report_to: list[str] = field(
        default_factory=list, metadata={"doc": "live views: tensorboard, wandb"}
    )

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
_ORDERED = (
    ("fl.clients_per_round", "data.num_clients"),
    ("optim.lr_min", "optim.lr"),
    ("fl.min_clients", "fl.clients_per_round"),
)


def _algorithm_sections() -> dict[str, Section]:
    """Every registered algorithm's sections at their defaults."""
    from spearfl.algorithms.registry import algorithm_sections

    return {name: cls() for name, cls in algorithm_sections().items()}


@dataclass
class Config:
    """The whole experiment; one attribute per YAML section.

    The shared sections are fields; each algorithm's own sections (``spear``, ``grpo``, ...)
    are declared beside its update and registered with it, kept in ``sections`` and read as
    attributes all the same (``cfg.spear.lambda_lose``) or with :meth:`section`.
    """

    output_dir: str = "runs/spear"
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    gen: GenConfig = field(default_factory=GenConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    hf: HFConfig = field(default_factory=HFConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sections: dict[str, Section] = field(default_factory=_algorithm_sections)
    """The registered algorithms' sections, by YAML name."""

    def __post_init__(self) -> None:
        self.output_dir = _coerce("output_dir", self.output_dir, str, {})
        self.sections = {**_algorithm_sections(), **self.sections}
        for name, cls in all_sections().items():
            if not isinstance(self.section(name), cls):
                raise ConfigError(f"section '{name}' must be a {cls.__name__}", name)
        for small, big in _ORDERED:
            a, b = self.get(small), self.get(big)
            if a > b:
                raise ConfigError(f"{small} ({a!r}) must be <= {big} ({b!r})", small)
        from spearfl.algorithms.registry import human_algorithms

        human = human_algorithms()
        if self.feedback.provider == "human" and self.algorithm.name not in human:
            raise ConfigError(
                f"feedback.provider 'human' trains {' or '.join(human)} only, "
                f"not {self.algorithm.name!r}",
                "feedback.provider",
            )

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: an algorithm's section, read as an attribute.
        sections = self.__dict__.get("sections")
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__!r} has no section {name!r}")

    def section(self, name: str) -> Section:
        """The section called ``name`` in the YAML layout, shared or an algorithm's."""
        if name in _CORE_SECTIONS:
            return getattr(self, name)
        if name in self.sections:
            return self.sections[name]
        raise KeyError(name)

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
        """Plain nested dict that ``config_from_dict`` turns back into an equal Config, in the
        paper's layout: the algorithms' sections after ``gen``, as its files have them."""
        out: dict[str, Any] = {"output_dir": self.output_dir}
        for name in _CORE_SECTIONS:
            out[name] = dataclasses.asdict(getattr(self, name))
            if name == "gen":
                out.update({k: dataclasses.asdict(v) for k, v in self.sections.items()})
        return out

    def to_yaml(self) -> str:
        """YAML in the same layout ``load_config`` reads, for saving next to a run."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self) -> str:
        """Compact JSON, used to ship the config to clients."""
        return json.dumps(self.to_dict())


_CORE_SECTIONS: dict[str, type[Section]] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in fields(Config)
    if f.name not in ("output_dir", "sections")
}


def all_sections() -> dict[str, type[Section]]:
    """Every section a config may hold, by YAML name: the shared ones, then the registered
    algorithms' (a module that ``algorithm.module`` names adds its own once imported)."""
    from spearfl.algorithms.registry import algorithm_sections

    return {**_CORE_SECTIONS, **algorithm_sections()}


def _all_keys() -> list[str]:
    return ["output_dir"] + [
        f"{name}.{f.name}"
        for name, cls in all_sections().items()
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


def _unknown(key: str, where: str, sections: Mapping[str, type[Section]]) -> ConfigError:
    """Unknown-key error: where a moved key went, else the closest known key as a suggestion."""
    section, _, leaf = key.partition(".")
    moved = sections[section].MOVED.get(leaf) if section in sections else None
    if moved is not None:
        return ConfigError(f"'{key}' is not a key: {moved}", key, where)
    known = _all_keys()
    leaf_matches = [k for k in known if k.rsplit(".", 1)[-1] == key]  # e.g. 'lr' at top
    guess = leaf_matches or difflib.get_close_matches(key, known + list(sections), n=1)
    hint = f"; did you mean '{guess[0]}'?" if guess else ""
    kind = "key" if "." in key or leaf_matches else "section"
    return ConfigError(f"unknown {kind} '{key}'", key, where, hint)


def _checked_section(
    name: str, section: Any, cls: type[Section], source: str, origins: Mapping[str, str]
) -> Section:
    """One YAML section, its keys known to ``cls`` and its values valid."""
    where = origins.get(name, source)
    if section is None:  # 'spear:' with nothing under it
        section = {}
    if not isinstance(section, Mapping):
        raise ConfigError(
            f"section '{name}' must be a mapping of keys, got {_show(section)}", name, where
        )
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    for key in section:
        if key not in known:
            raise _unknown(f"{name}.{key}", origins.get(f"{name}.{key}", source), all_sections())
    return _located(cls, section, source, origins)


def _module_beside(source: str, section: Any) -> Any:
    """``algorithm.module`` as a ``.py`` path relative to the config file's folder."""
    if not isinstance(section, Mapping) or not Path(source).is_file():
        return section
    module = section.get("module")
    if isinstance(module, str) and module.endswith(".py") and not Path(module).is_absolute():
        return {**section, "module": str(Path(source).resolve().parent / module)}
    return section


def _build(data: Any, source: str, origins: Mapping[str, str]) -> Config:
    """Validate raw nested data; ``origins`` maps dotted keys set by --set to that item.

    The ``algorithm`` section comes first: the module it names may register the sections the
    rest of the file holds."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"the top level must be a mapping of sections, got {_show(data)}", None, source
        )
    algorithm = _checked_section(
        "algorithm", _module_beside(source, data.get("algorithm")), AlgorithmConfig, source, origins
    )
    sections = all_sections()
    kwargs: dict[str, Any] = {"algorithm": algorithm}
    extra: dict[str, Section] = {}
    for name, section in data.items():
        name = str(name)
        if name == "output_dir":
            kwargs[name] = section
            continue
        if name == "algorithm":
            continue
        cls = sections.get(name)
        if cls is None:
            raise _unknown(name, origins.get(name, source), sections)
        checked = _checked_section(name, section, cls, source, origins)
        if name in _CORE_SECTIONS:
            kwargs[name] = checked
        else:
            extra[name] = checked
    kwargs["sections"] = extra
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
    owner = all_sections().get(section, Config) if section else Config
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
