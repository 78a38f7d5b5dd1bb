"""LoRA on the last N decoder layers, and moving adapter tensors in and out of the model.

Only adapter tensors ever leave a process; the base model is loaded once and its LoRA weights are
overwritten in place with whatever global adapter arrives.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

AdapterState = "OrderedDict[str, torch.Tensor]"


def num_decoder_layers(model: PreTrainedModel) -> int:
    config = model.config
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(config, attr, None):
            return int(getattr(config, attr))
    raise ValueError("cannot tell how many decoder layers the model has")


def attach_lora(
    model: PreTrainedModel,
    *,
    r: int,
    alpha: float,
    dropout: float,
    bias: str,
    target_modules: list[str],
    last_n_layers: int | None,
    seed: int,
) -> PeftModel:
    """Wrap ``model`` with a LoRA adapter whose initial A matrices depend only on ``seed``."""
    n_layers = num_decoder_layers(model)
    layers = None
    if last_n_layers is not None and last_n_layers < n_layers:
        layers = list(range(n_layers - last_n_layers, n_layers))
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        bias=bias,
        target_modules=list(target_modules),
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with warnings.catch_warnings():
            # peft reads a transformers attribute deprecated in v5; nothing for users to act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            peft_model = get_peft_model(model, config)
    finally:
        torch.random.set_rng_state(state)
    return peft_model


def trainable_parameters(model: torch.nn.Module) -> OrderedDict[str, torch.nn.Parameter]:
    return OrderedDict((n, p) for n, p in model.named_parameters() if p.requires_grad)


def get_adapter_state(model: torch.nn.Module) -> OrderedDict[str, torch.Tensor]:
    """A detached CPU float32 copy of every trainable (adapter) tensor, by parameter name."""
    return OrderedDict(
        (n, p.detach().to("cpu", torch.float32).clone())
        for n, p in trainable_parameters(model).items()
    )


def set_adapter_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Overwrite the adapter in place; names and shapes must match exactly."""
    params = trainable_parameters(model)
    missing = params.keys() - state.keys()
    extra = state.keys() - params.keys()
    if missing or extra:
        raise ValueError(
            f"adapter mismatch: missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}"
        )
    with torch.no_grad():
        for name, param in params.items():
            tensor = state[name]
            if tuple(tensor.shape) != tuple(param.shape):
                raise ValueError(
                    f"adapter tensor {name}: shape {tuple(tensor.shape)} != {tuple(param.shape)}"
                )
            param.copy_(tensor.to(param.device, param.dtype))


def save_adapter(model: PeftModel, state: dict[str, torch.Tensor], directory: str | Path) -> None:
    """Write ``state`` in PEFT format (loads with ``PeftModel.from_pretrained``)."""
    current = get_adapter_state(model)
    set_adapter_state(model, state)
    try:
        model.save_pretrained(str(directory))
    finally:
        set_adapter_state(model, current)


def load_adapter(model: PeftModel, directory: str | Path) -> None:
    """Load a PEFT-format adapter (safetensors only, never pickle) into ``model`` in place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(directory) / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no adapter_model.safetensors in {directory}")
    result = set_peft_model_state_dict(model, load_file(str(path)))
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing:
        raise ValueError(f"{path} does not match the model's adapter: missing {missing[:3]}")
