"""``spearfl`` command line.

``spearfl run [CONFIG] [--set section.key=value ...]``, ``spearfl run --resume RUN_DIR``,
``spearfl compare [CONFIG] --algorithms spear,grpo,... [--set ...]``,
``spearfl sweep [CONFIG] --grid section.key=a,b [--seeds 42,43] [--set ...]``,
``spearfl serve --client-id N [CONFIG]`` (a device's feedback page) and
``spearfl check [CONFIG] [--set ...]`` (what a run would use, without running it). Every command
checks its config before any work and fails with one line (``--debug``: the full traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from spearfl.cli.check import add_parser as add_check_parser
from spearfl.cli.check import checked_before_work
from spearfl.cli.compare import add_parser as add_compare_parser
from spearfl.cli.options import config_source, load_or_report
from spearfl.cli.serve import add_parser as add_serve_parser
from spearfl.cli.sweep import add_parser as add_sweep_parser


def _resume_config(args: argparse.Namespace) -> tuple[Path, list[str]] | str:
    """The saved config of the run to resume, or an error message."""
    if args.config or args.output_dir:
        return "--resume takes the run directory only; its config.yaml is the run's config"
    run_dir = Path(args.resume)
    if not (run_dir / "config.yaml").is_file():
        return f"{run_dir} is not a run directory (no config.yaml); nothing to resume"
    return run_dir / "config.yaml", [*(args.set or []), f"output_dir={run_dir}"]


def _run(args: argparse.Namespace) -> int:
    if args.resume:
        found = _resume_config(args)
        if isinstance(found, str):
            print(f"spearfl: {found}", file=sys.stderr)
            return 2
        path, overrides = found
    else:
        path, overrides = config_source(args)
    cfg = load_or_report(path, overrides)
    if cfg is None:
        return 2
    run_dir = Path(cfg.output_dir)
    if not args.resume and (run_dir / "history.jsonl").exists() and not args.overwrite:
        print(
            f"spearfl: {run_dir} already holds a run; pass --resume {run_dir} to continue it, "
            "--overwrite to replace it, or another --output-dir",
            file=sys.stderr,
        )
        return 2

    if checked_before_work(cfg, args.debug) is None:
        return 2

    from spearfl.cli.progress import RichObserver
    from spearfl.federation.checkpoint import load_checkpoint
    from spearfl.federation.simulation import simulate

    done = 0
    if args.resume:
        ckpt = load_checkpoint(run_dir)
        done = ckpt.round_num if ckpt else 0
        print(f"resuming {run_dir} after round {done} of {cfg.fl.rounds}")
    observer = RichObserver(cfg.fl.rounds, completed=done)
    started = time.perf_counter()
    try:
        summary = simulate(cfg, run_dir, observer, resume=bool(args.resume))
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
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its last complete round (its own config)",
    )
    run.set_defaults(func=_run)
    add_compare_parser(sub)
    add_serve_parser(sub)
    add_sweep_parser(sub)
    add_check_parser(sub)
    for command in sub.choices.values():
        command.add_argument(
            "--debug", action="store_true", help="show the full traceback of a failure"
        )
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
