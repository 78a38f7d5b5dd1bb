"""What every ``spearfl`` command does with its config arguments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from spearfl.config import Config, ConfigError, load_config
from spearfl.configs import default_config_path


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
