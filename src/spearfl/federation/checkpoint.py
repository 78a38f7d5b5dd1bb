"""The server's checkpoint: everything a crashed run needs to continue as if nothing happened.

One safetensors file, ``checkpoint.safetensors`` in the run directory, rewritten after every
round: the global adapter, the server optimiser's moments, torch's and Python's random-generator
states (tensors), and the round number, optimiser step count and elapsed time (JSON metadata).
It is written to a temporary file, flushed to disk and renamed over the old one, so a crash at
any instant leaves either the previous round's checkpoint or this round's, never half of one.
Only safetensors and JSON are read back: loading a checkpoint cannot execute code.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = "spearfl-checkpoint/1"
_ADAPTER, _M, _V, _RNG = "adapter/", "optim.m/", "optim.v/", "rng/torch"


@dataclass
class Checkpoint:
    round_num: int
    """The last round whose aggregate is in ``adapter`` (0: before any training)."""
    adapter: dict[str, torch.Tensor]
    optimizer: dict[str, Any] = field(default_factory=dict)
    """``ServerOptimizer.state_dict()``."""
    torch_rng: torch.Tensor | None = None
    python_rng: Any = None
    elapsed_seconds: float = 0.0


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _to_json(value: Any) -> Any:
    """Python's random state is nested tuples; JSON keeps them as lists."""
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    return value


def save_checkpoint(run_dir: str | os.PathLike[str], ckpt: Checkpoint) -> Path:
    """Atomically replace the run's checkpoint with ``ckpt``."""
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, state in (
        (_ADAPTER, ckpt.adapter),
        (_M, ckpt.optimizer.get("m", {})),
        (_V, ckpt.optimizer.get("v", {})),
    ):
        for key, value in state.items():
            tensors[prefix + key] = value.detach().to("cpu").contiguous().clone()
    if ckpt.torch_rng is not None:
        tensors[_RNG] = ckpt.torch_rng.detach().to("cpu").contiguous().clone()
    scalars = {k: v for k, v in ckpt.optimizer.items() if k not in ("m", "v")}
    meta = {
        "format": FORMAT,
        "round": ckpt.round_num,
        "optimizer": scalars,
        "python_rng": _to_json(ckpt.python_rng),
        "elapsed_seconds": ckpt.elapsed_seconds,
    }
    target = folder / CHECKPOINT_FILE
    tmp = folder / (CHECKPOINT_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"spearfl": json.dumps(meta)})
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    _fsync_dir(folder)
    return target


def load_checkpoint(run_dir: str | os.PathLike[str]) -> Checkpoint | None:
    """The run's checkpoint, or None when the run never finished a round's checkpoint."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as fh:
        raw = (fh.metadata() or {}).get("spearfl")
        if raw is None:
            raise ValueError(f"{path}: not a spearfl checkpoint (no 'spearfl' metadata)")
        meta = json.loads(raw)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    optimizer = dict(meta.get("optimizer") or {})
    optimizer.update(m=part(_M), v=part(_V))
    return Checkpoint(
        round_num=int(meta["round"]),
        adapter=part(_ADAPTER),
        optimizer=optimizer,
        torch_rng=tensors.get(_RNG),
        python_rng=_from_json(meta.get("python_rng")),
        elapsed_seconds=float(meta.get("elapsed_seconds") or 0.0),
    )


def checkpoint_round(run_dir: str | os.PathLike[str]) -> int | None:
    """The round of the run's checkpoint, read from its metadata alone (no tensors), or None
    when there is no checkpoint."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as fh:
        raw = (fh.metadata() or {}).get("spearfl")
    if raw is None:
        raise ValueError(f"{path}: not a spearfl checkpoint (no 'spearfl' metadata)")
    return int(json.loads(raw)["round"])


def capture_rng() -> tuple[torch.Tensor, Any]:
    """The process's torch and Python generator states."""
    return torch.get_rng_state(), random.getstate()


def restore_rng(ckpt: Checkpoint) -> None:
    if ckpt.torch_rng is not None:
        torch.set_rng_state(ckpt.torch_rng)
    if ckpt.python_rng is not None:
        random.setstate(ckpt.python_rng)
