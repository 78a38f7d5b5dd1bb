"""``--resume`` continues the same run: its own config, a few keys that cannot change results,
and more rounds only when asked for explicitly (``--extend-rounds N``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from spearfl.config import Config, load_config, save_config
from spearfl.reporting.history import COMPLETE_FILE
from spearfl.reporting.run_folder import CONFIG_FILE, differing_keys, run_state

MAY_CHANGE_ON_RESUME: tuple[str, ...] = (
    "fl.round_timeout",
    "fl.max_round_retries",
    "fl.num_cpus_per_client",
)
"""Keys ``--set`` may change when resuming: how long to wait for clients, how often to retry,
how many CPUs a simulated client reserves. None of them changes a complete round's result."""


def changed_settings(saved: Config, cfg: Config) -> list[str]:
    """Keys where ``cfg`` differs from a run's saved config in a way a resume cannot take."""
    return [k for k in differing_keys(saved, cfg) if k not in MAY_CHANGE_ON_RESUME]


class ResumeRefused(ValueError):
    """The folder holds no run to resume, or the resume would change the run."""


@dataclass(frozen=True)
class ResumePlan:
    cfg: Config
    """The config to run with (``output_dir`` = the folder being resumed)."""
    finished: bool
    """The run is complete and nothing was asked to extend it: there is no work to do."""
    notes: tuple[str, ...] = ()
    """What changed, for the person (one line each)."""


def plan_resume(run_dir: Path, sets: Sequence[str], extend_rounds: int | None) -> ResumePlan:
    """What ``spearfl run --resume run_dir`` will do. Raises ResumeRefused when the folder
    holds no run or ``sets`` would change the run, ConfigError for a bad value."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ResumeRefused(
            f"{run_dir} is not a run directory (no {CONFIG_FILE}); nothing to resume"
        )
    saved = load_config(path)
    wanted = load_config(path, list(sets))
    changed = differing_keys(saved, wanted)
    refused = changed_settings(saved, wanted)
    if refused:
        extend = " (to add rounds: --extend-rounds N)" if "fl.rounds" in refused else ""
        raise ResumeRefused(
            f"--resume continues the same run; --set cannot change {', '.join(refused)}{extend}. "
            f"Keys that may change on resume: {', '.join(MAY_CHANGE_ON_RESUME)}"
        )
    notes = [f"{key} = {wanted.get(key)!r} (was {saved.get(key)!r})" for key in changed]
    state = run_state(run_dir)
    if extend_rounds is not None:
        rounds = saved.fl.rounds + extend_rounds
        wanted = load_config(path, [*sets, f"fl.rounds={rounds}"])
        notes.append(f"fl.rounds = {rounds} (was {saved.fl.rounds}): {extend_rounds} more")
    elif state.status == "complete":
        return ResumePlan(_at(path, sets, run_dir), finished=True)
    if changed or extend_rounds is not None:
        # The file records the run as it now is; the finished marker goes first, so that a
        # run interrupted during its extension reads as interrupted, not complete.
        (run_dir / COMPLETE_FILE).unlink(missing_ok=True)
        save_config(wanted, path)
    return ResumePlan(_at(path, [], run_dir), finished=False, notes=tuple(notes))


def _at(path: Path, sets: Sequence[str], run_dir: Path) -> Config:
    """The config in ``path`` with ``sets``, writing into ``run_dir`` (the folder may have moved
    since the run started)."""
    return load_config(path, [*sets, f"output_dir={run_dir}"])
