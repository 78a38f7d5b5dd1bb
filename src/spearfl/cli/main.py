"""``spearfl`` command line: ``spearfl run [CONFIG] [--set section.key=value ...]`` and
``spearfl compare [CONFIG] --algorithms spear,grpo,... [--set ...]``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from importlib import resources
from pathlib import Path

from spearfl.cli.compare import add_parser as add_compare_parser
from spearfl.config import ConfigError, load_config

DEFAULT_CONFIG = "embedded.yaml"


def default_config_path() -> Path:
    return Path(str(resources.files("spearfl.configs") / DEFAULT_CONFIG))


def _run(args: argparse.Namespace) -> int:
    path = Path(args.config) if args.config else default_config_path()
    overrides = list(args.set or [])
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    try:
        cfg = load_config(path, overrides)
    except ConfigError as err:
        print(f"spearfl: config error: {err}", file=sys.stderr)
        return 2
    run_dir = Path(cfg.output_dir)
    if (run_dir / "history.jsonl").exists() and not args.overwrite:
        print(
            f"spearfl: {run_dir} already holds a run; pass --overwrite or another --output-dir",
            file=sys.stderr,
        )
        return 2
    if args.overwrite and (run_dir / "history.jsonl").exists():
        (run_dir / "history.jsonl").unlink()

    from spearfl.cli.progress import RichObserver
    from spearfl.federation.simulation import simulate

    observer = RichObserver(cfg.fl.rounds)
    started = time.perf_counter()
    try:
        summary = simulate(cfg, run_dir, observer)
    finally:
        observer.close()
    wall = time.perf_counter() - started
    print(json.dumps(summary, indent=2))
    print(f"run directory: {run_dir}  ({wall:.0f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spearfl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a federated experiment (default: the embedded demo)")
    run.add_argument("config", nargs="?", help="YAML config (default: the embedded demo)")
    run.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable)",
    )
    run.add_argument("--output-dir", help="run directory (overrides output_dir)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run's history")
    run.set_defaults(func=_run)
    add_compare_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Libraries that log at DEBUG through the root handler (Flower) stay quiet below WARNING.
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
