"""``spearfl compare``: the same experiment once per algorithm, then one report.

Every run gets the same configuration except ``algorithm.name`` (and its own run directory), so
the partitions, the clients drawn each round and the eval set, which all follow from the shared
seed, are identical. A run directory that already holds a ``summary.json`` is kept as it is, so
an interrupted comparison resumes with the algorithms still missing; a run that was cut off
midway (history but no summary) is started again from round 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spearfl.config import Config, ConfigError, load_config
from spearfl.reporting.history import HISTORY_FILE, SUMMARY_FILE


def parse_algorithms(text: str | None, known: list[str]) -> list[str]:
    """Names from a comma-separated list, in order, without repeats (None: every known one);
    unknown names are an error that lists the known ones."""
    if text is None:
        return list(known)
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise ValueError("--algorithms: give at least one algorithm name")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(
            f"--algorithms: unknown algorithm(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return names


def _configs(args: argparse.Namespace, names: list[str]) -> tuple[Path, dict[str, Config]]:
    """The comparison folder and one validated config per algorithm (raises ConfigError)."""
    from spearfl.configs import default_config_path

    path = Path(args.config) if args.config else default_config_path()
    overrides = list(args.set or [])
    base = load_config(path, overrides)
    root = Path(args.output_dir) if args.output_dir else Path(base.output_dir) / "compare"
    configs = {
        name: load_config(path, [*overrides, f"algorithm.name={name}", f"output_dir={root / name}"])
        for name in names
    }
    return root, configs


def run_compare(args: argparse.Namespace) -> int:
    from spearfl.algorithms.registry import ALGORITHMS

    try:
        names = parse_algorithms(args.algorithms, list(ALGORITHMS))
    except ValueError as err:
        print(f"spearfl: {err}", file=sys.stderr)
        return 2
    try:
        root, configs = _configs(args, names)
    except ConfigError as err:
        print(f"spearfl: config error: {err}", file=sys.stderr)
        return 2
    from spearfl.cli.check import checked_before_work

    for index, cfg in enumerate(configs.values()):
        if checked_before_work(cfg, args.debug, show_notes=index == 0) is None:
            return 2

    from spearfl.cli.progress import RichObserver
    from spearfl.federation.simulation import simulate
    from spearfl.federation.worker import forget_policy
    from spearfl.reporting.comparison import write_comparison

    for name, cfg in configs.items():
        run_dir = Path(cfg.output_dir)
        if (run_dir / SUMMARY_FILE).is_file():
            print(f"{name}: {run_dir} already finished; kept")
            continue
        if (run_dir / HISTORY_FILE).exists():
            print(f"{name}: {run_dir} holds an unfinished run; starting it again")
            (run_dir / HISTORY_FILE).unlink()
        print(f"{name}: running into {run_dir}")
        forget_policy()  # each run starts from the same freshly initialised adapter
        observer = RichObserver(cfg.fl.rounds)
        try:
            simulate(cfg, run_dir, observer)
        finally:
            observer.close()

    source = args.config or "the embedded demo config"
    note = f"Config: {source}; every run identical except `algorithm.name`."
    md, png = write_comparison({n: c.output_dir for n, c in configs.items()}, root, note)
    print(f"comparison: {md}  {png}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``spearfl compare`` on the main parser's subcommands."""
    compare = sub.add_parser(
        "compare", help="run one config with several algorithms and compare them"
    )
    compare.add_argument("config", nargs="?", help="YAML config (default: the embedded demo)")
    compare.add_argument(
        "--algorithms",
        metavar="NAME,NAME,...",
        help="comma-separated algorithm names, e.g. spear,grpo,opsd,rltf_sd,feedback_sft "
        "(default: every implemented algorithm)",
    )
    compare.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a config value for every run (repeatable)",
    )
    compare.add_argument(
        "--output-dir",
        help="comparison folder; runs go to DIR/<algorithm>/ (default: <output_dir>/compare)",
    )
    compare.set_defaults(func=run_compare)
