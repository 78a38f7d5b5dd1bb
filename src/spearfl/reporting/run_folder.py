"""What a run folder holds (nothing, a finished run, an interrupted one) and how to set a run
aside.

A folder belongs to one run. It "holds a run" as soon as any file a run writes is there, so a
run that died in round 0 (only ``config.yaml``) is protected as much as a finished one;
"finished" means the ``complete.json`` marker is there (``reporting.history``), nothing less.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from spearfl.config import Config, ConfigError, load_config
from spearfl.reporting.history import COMPLETE_FILE, HISTORY_FILE, SUMMARY_FILE, read_complete

CONFIG_FILE = "config.yaml"
RUN_FILES: tuple[str, ...] = (
    CONFIG_FILE,
    HISTORY_FILE,
    "checkpoint.safetensors",  # federation.checkpoint.CHECKPOINT_FILE (that module loads torch)
    SUMMARY_FILE,
    COMPLETE_FILE,
    "partition.json",
    "curves.png",
    "adapters",
)
"""Names a run writes at the top of its folder; any one of them means the folder holds a run."""


def holds_run(folder: str | Path) -> bool:
    folder = Path(folder)
    return any((folder / name).exists() for name in RUN_FILES)


@dataclass(frozen=True)
class RunState:
    folder: Path
    status: Literal["absent", "complete", "interrupted"]
    last_round: int | None = None
    """The last complete round (the checkpoint's); None before the first checkpoint."""
    rounds: int | None = None
    """The run's ``fl.rounds`` (None when its config.yaml cannot be read)."""

    def describe(self) -> str:
        if self.status == "absent":
            return "absent"
        of = f" of {self.rounds}" if self.rounds is not None else ""
        if self.status == "complete":
            return f"complete ({self.rounds} round{'' if self.rounds == 1 else 's'})"
        if self.last_round is None:
            return "interrupted before its first checkpoint"
        return f"interrupted after round {self.last_round}{of}"


def saved_config(folder: str | Path) -> Config | None:
    """The run's own ``config.yaml`` (None when missing or unreadable)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return load_config(path)
    except ConfigError:
        return None


def run_state(folder: str | Path) -> RunState:
    from spearfl.federation.checkpoint import checkpoint_round

    folder = Path(folder)
    if not holds_run(folder):
        return RunState(folder, "absent")
    saved = saved_config(folder)
    rounds = saved.fl.rounds if saved else None
    marker = read_complete(folder)
    if marker is not None:
        done = int(marker.get("rounds", rounds or 0))
        return RunState(folder, "complete", done, done)
    return RunState(folder, "interrupted", checkpoint_round(folder), rounds)


def set_aside(folder: str | Path) -> Path:
    """Rename ``folder`` to ``<folder>.old-<date>-<time>`` (never onto an existing name) and
    return the new path: the earlier run stays whole, and nothing of it mixes with the next."""
    folder = Path(folder)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = folder.with_name(f"{folder.name}.old-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}.old-{stamp}-{n}")
    folder.rename(target)
    return target


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing_keys(a: Config, b: Config, ignore: tuple[str, ...] = ("output_dir",)) -> list[str]:
    """The dotted keys whose values differ between two configs, sorted."""
    fa, fb = _flat(a.to_dict()), _flat(b.to_dict())
    return sorted(k for k in fa.keys() | fb.keys() if k not in ignore and fa.get(k) != fb.get(k))
