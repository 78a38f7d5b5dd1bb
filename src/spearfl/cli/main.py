"""``spearfl`` command line.

``spearfl run [CONFIG] [--set section.key=value ...]``, ``spearfl run --resume RUN_DIR
[--extend-rounds N]``, ``spearfl compare [CONFIG] --algorithms spear,grpo,... [--set ...]``,
``spearfl sweep [CONFIG] --grid section.key=a,b [--seeds 42,43] [--set ...]``,
``spearfl serve --client-id N [CONFIG]`` (a device's feedback page),
``spearfl worker --ticket PATH [CONFIG]`` (a device's model loaded once, beside its SuperNode)
and ``spearfl check [CONFIG] [--set ...]`` (what a run would use, without running it). Every command
checks its config before any work and fails with one line (``--debug``: the full traceback).
A run folder belongs to one run: a folder holding a run is refused unless ``--resume``
continues it or ``--overwrite`` moves it aside. Ctrl-C or SIGTERM stops a run after its last
complete round and prints how to resume.
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
from spearfl.cli.options import claim_run_folder, config_source, load_or_report, report_interrupt
from spearfl.cli.serve import add_parser as add_serve_parser
from spearfl.cli.sweep import add_parser as add_sweep_parser
from spearfl.cli.worker import add_parser as add_worker_parser
from spearfl.config import ConfigError
from spearfl.federation.interrupt import RunInterrupted


def _resume_plan(args: argparse.Namespace):
    """The plan of ``--resume RUN_DIR`` (``cli.resume``), or None after printing why not."""
    from spearfl.cli.resume import ResumeRefused, plan_resume

    if args.config or args.output_dir:
        print(
            "spearfl: --resume takes the run directory only; its config.yaml is the run's config",
            file=sys.stderr,
        )
        return None
    try:
        return plan_resume(Path(args.resume), args.set or [], args.extend_rounds)
    except ResumeRefused as err:
        print(f"spearfl: {err}", file=sys.stderr)
    except ConfigError as err:
        print(f"spearfl: config error: {err}", file=sys.stderr)
    return None


def _run(args: argparse.Namespace) -> int:
    if args.extend_rounds is not None and not args.resume:
        print(
            "spearfl: --extend-rounds N extends a run: use it with --resume RUN_DIR",
            file=sys.stderr,
        )
        return 2
    if args.resume:
        plan = _resume_plan(args)
        if plan is None:
            return 2
        cfg = plan.cfg
        if plan.finished:
            from spearfl.reporting.run_folder import run_state

            print(
                f"{args.resume} is {run_state(args.resume).describe()}; nothing to do. To train "
                f"longer: spearfl run --resume {args.resume} --extend-rounds N"
            )
            return 0
    else:
        cfg = load_or_report(*config_source(args))
        if cfg is None:
            return 2
    run_dir = Path(cfg.output_dir)
    # Checked before the folder is claimed: a run that cannot start moves nothing aside.
    if checked_before_work(cfg, args.debug) is None:
        return 2
    if not args.resume and not claim_run_folder(
        run_dir, args.overwrite, f"spearfl run --resume {run_dir}"
    ):
        return 2

    from spearfl.cli.progress import RichObserver
    from spearfl.federation.checkpoint import checkpoint_round
    from spearfl.federation.simulation import simulate

    done = 0
    if args.resume:
        done = checkpoint_round(run_dir) or 0
        for note in plan.notes:
            print(f"resuming with {note}")
        print(f"resuming {run_dir} after round {done} of {cfg.fl.rounds}")
    observer = RichObserver(cfg.fl.rounds, completed=done)
    started = time.perf_counter()
    try:
        summary = simulate(cfg, run_dir, observer, resume=bool(args.resume))
    except RunInterrupted as stopped:
        observer.close()
        return report_interrupt(stopped)
    finally:
        observer.close()
    wall = time.perf_counter() - started
    print(json.dumps(summary, indent=2))
    print(f"run directory: {run_dir}  ({wall:.0f} s)")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


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
    folder = run.add_mutually_exclusive_group()
    folder.add_argument(
        "--overwrite",
        action="store_true",
        help="move a run already in the folder aside (to DIR.old-<time>) and start afresh",
    )
    folder.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its last complete round, with its own config "
        "(--set may change only fl.round_timeout, fl.max_round_retries, fl.num_cpus_per_client)",
    )
    run.add_argument(
        "--extend-rounds",
        type=_positive,
        metavar="N",
        help="with --resume: train N more rounds (written into the run's config.yaml)",
    )
    run.set_defaults(func=_run)
    add_compare_parser(sub)
    add_serve_parser(sub)
    add_sweep_parser(sub)
    add_check_parser(sub)
    add_worker_parser(sub)
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
    try:
        return int(args.func(args))
    except KeyboardInterrupt:  # before a command's own handling began (e.g. while importing)
        print("spearfl: interrupted before any work started", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
