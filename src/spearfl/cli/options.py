"""What every ``spearfl`` command does with its config arguments."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from spearfl.config import Config, ConfigError, load_config
from spearfl.federation.interrupt import RunInterrupted
from spearfl.presets import default_config_path


def config_source(args: argparse.Namespace, extra: Sequence[str] = ()) -> tuple[Path, list[str]]:
    """The YAML file (default: the embedded demo) and the overrides: ``--set`` items, then
    ``extra``, then ``--output-dir``."""
    path = Path(args.config) if args.config else default_config_path()
    overrides = [*(args.set or []), *extra]
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    return path, overrides


def load_or_report(path: Path, overrides: Sequence[str]) -> Config | None:
    """The validated config, or None after printing the error that names the key."""
    try:
        return load_config(path, overrides)
    except ConfigError as err:
        print(f"spearfl: config error: {err}", file=sys.stderr)
        return None


def parse_seeds(text: str | None, default: int) -> list[int]:
    """Seeds from a comma-separated list, in order, without repeats (None: ``[default]``)."""
    if text is None:
        return [default]
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            seed = int(part)
        except ValueError:
            raise ValueError(f"--seeds: {part!r} is not an integer") from None
        if seed not in seeds:
            seeds.append(seed)
    if not seeds:
        raise ValueError("--seeds: give at least one seed, e.g. --seeds 42,43,44")
    return seeds


def claim_run_folder(run_dir: Path, overwrite: bool, resume_hint: str) -> bool:
    """Whether a new run may write into ``run_dir``: yes when it holds no run; with
    ``overwrite`` the earlier run is first moved aside whole (and the new path printed);
    otherwise the refusal is printed, naming ``resume_hint`` as the way to continue it."""
    from spearfl.reporting.run_folder import holds_run, run_state, set_aside

    if not holds_run(run_dir):
        return True
    if not overwrite:
        print(
            f"spearfl: {run_dir} already holds a run ({run_state(run_dir).describe()}); "
            f"continue it with `{resume_hint}`, pass --overwrite to move it aside and start "
            "afresh, or choose another --output-dir",
            file=sys.stderr,
        )
        return False
    moved = set_aside(run_dir)
    print(f"moved the earlier run in {run_dir} aside to {moved}")
    return True


def report_interrupt(stopped: RunInterrupted, resume: str | None = None) -> NoReturn:
    """Print the one line that says how to go on, then end the process with 128 + the signal.

    Ray is shut down and everything the run committed is on disk by now. Python's own exit
    would still wait for a server thread busy in an evaluation (it cannot be cut short) and
    spend seconds in native teardown (measured: 3 s after Ray's shutdown), so the process ends
    here."""
    print(stopped.line(resume), file=sys.stderr, flush=True)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(stopped.exit_code)
