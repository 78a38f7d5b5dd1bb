"""``spearfl compare``: the same experiment once per algorithm, then one report.

Every run gets the same configuration except ``algorithm.name`` (and its own run directory), so
the partitions, the clients drawn each round and the eval set, which all follow from the shared
seed, are identical. Before anything runs, each run folder's state is printed (complete,
interrupted after round k, absent); a complete run is kept, an interrupted one resumes from its
checkpoint, and a folder holding a run of other settings (or a complete run whose rounds or
clients per round differ from the config's) stops the comparison unless ``--overwrite`` moves
it aside to be rerun. So running the same command again after a Ctrl-C finishes the comparison.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from spearfl.cli.options import report_interrupt
from spearfl.cli.resume import changed_settings
from spearfl.config import Config, ConfigError, load_config
from spearfl.federation.interrupt import RunInterrupted
from spearfl.reporting.history import read_history
from spearfl.reporting.run_folder import (
    RunState,
    run_state,
    saved_config,
    set_aside,
)

if TYPE_CHECKING:
    from spearfl.reporting.comparison import Pair


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


def _base_config(args: argparse.Namespace) -> tuple[Path, list[str], Config]:
    """The config file, the ``--set`` items and what they give (raises ConfigError). Reading it
    imports the module its ``algorithm.module`` names, so its algorithms can be compared."""
    from spearfl.presets import default_config_path

    path = Path(args.config) if args.config else default_config_path()
    overrides = list(args.set or [])
    return path, overrides, load_config(path, overrides)


def _configs(
    args: argparse.Namespace,
    source: tuple[Path, list[str], Config],
    names: list[str],
    seeds: list[int] | None,
) -> tuple[Path, dict[str, Config]]:
    """The comparison folder and one validated config per run (raises ConfigError);
    ``source``: what :func:`_base_config` read.

    Without ``seeds`` the runs are ``DIR/<algorithm>/`` with the config's own seed, keyed by the
    algorithm; with them, ``DIR/seed-S/<algorithm>/`` with ``data.seed = S``, keyed
    ``seed-S/<algorithm>``, seed by seed."""
    from spearfl.reporting.seeds import seed_overrides

    path, overrides, base = source
    # Beside the config's own run folder, not inside it: that folder belongs to its run.
    root = Path(args.output_dir) if args.output_dir else Path(f"{base.output_dir}-compare")
    if seeds is None:
        return root, {
            name: load_config(
                path, [*overrides, f"algorithm.name={name}", f"output_dir={root / name}"]
            )
            for name in names
        }
    return root, {
        f"seed-{seed}/{name}": load_config(path, [*overrides, *seed_overrides(root, seed, name)])
        for seed in seeds
        for name in names
    }


def rounds_problem(run_dir: Path, cfg: Config) -> str | None:
    """Why a run's history does not have the config's rounds and clients per round, or None."""
    rounds = [e for e in read_history(run_dir) if int(e["round"]) > 0]
    numbers = [int(e["round"]) for e in rounds]
    if numbers != list(range(1, cfg.fl.rounds + 1)):
        shown = f"1..{numbers[-1]}" if numbers == list(range(1, len(numbers) + 1)) else numbers
        return f"its history has rounds {shown or 'none'}, the config asks for 1..{cfg.fl.rounds}"
    want = cfg.fl.clients_per_round
    short = [f"{e['round']} ({len(e['clients'])})" for e in rounds if len(e["clients"]) != want]
    if short:
        return f"round(s) {', '.join(short)} aggregated other than {want} clients per round"
    return None


def folder_problem(state: RunState, cfg: Config) -> str | None:
    """Why the run already in ``cfg.output_dir`` cannot be part of this comparison, or None."""
    if state.status == "absent":
        return None
    saved = saved_config(state.folder)
    if saved is None:
        return "it has no readable config.yaml"
    changed = changed_settings(saved, cfg)
    if changed:
        shown = ", ".join(f"{k}={saved.get(k)!r} (here {cfg.get(k)!r})" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        return f"it was run with other settings: {shown}{more}"
    if state.status == "complete":
        return rounds_problem(state.folder, cfg)
    return None


def _check_folders(configs: dict[str, Config], overwrite: bool) -> bool:
    """Print each run's state; refuse (False) folders that hold another run unless
    ``overwrite``, which moves them aside."""
    problems: dict[str, str] = {}
    for name, cfg in configs.items():
        state = run_state(cfg.output_dir)
        print(f"{name}: {cfg.output_dir}: {state.describe()}")
        problem = folder_problem(state, cfg)
        if problem:
            problems[name] = problem
    if problems and not overwrite:
        for name, problem in problems.items():
            print(
                f"spearfl: {name}: {configs[name].output_dir} cannot be part of this comparison: "
                f"{problem}; pass --overwrite to move it aside and rerun it, or choose another "
                "--output-dir",
                file=sys.stderr,
            )
        return False
    for name in problems:
        moved = set_aside(configs[name].output_dir)
        print(f"{name}: moved the earlier run aside to {moved}; running it again")
    return True


def cost_pair(target: str, baseline: str | None, names: list[str]) -> Pair | None:
    """The report's cost line: ``target`` against ``--baseline`` (default: grpo when it runs
    and is not the target; ``none``: no such line)."""
    if baseline is None:
        baseline = "grpo" if "grpo" in names and target != "grpo" else "none"
    if baseline == "none":
        return None
    from spearfl.reporting.comparison import Pair  # matplotlib: only when a report is written

    if baseline not in names or baseline == target:
        raise ValueError(
            f"--baseline {baseline!r} must be another of --algorithms {','.join(names)} (or none)"
        )
    return Pair(target, baseline)


def run_compare(args: argparse.Namespace) -> int:
    from spearfl.algorithms.registry import algorithm_names
    from spearfl.cli.options import parse_seeds

    try:
        source = _base_config(args)
    except ConfigError as err:
        print(f"spearfl: config error: {err}", file=sys.stderr)
        return 2
    try:
        names = parse_algorithms(args.algorithms, algorithm_names())
        seeds = parse_seeds(args.seeds, 0) if args.seeds else None
        target = args.target or ("spear" if "spear" in names else names[0])
        if target not in names:
            raise ValueError(f"--target {target!r} is not among --algorithms {','.join(names)}")
        pair = cost_pair(target, args.baseline, names)
    except ValueError as err:
        print(f"spearfl: {err}", file=sys.stderr)
        return 2
    try:
        root, configs = _configs(args, source, names, seeds)
    except ConfigError as err:
        print(f"spearfl: config error: {err}", file=sys.stderr)
        return 2
    from spearfl.cli.check import checked_before_work

    for index, cfg in enumerate(configs.values()):
        if checked_before_work(cfg, args.debug, show_notes=index == 0) is None:
            return 2
    if not _check_folders(configs, args.overwrite):
        return 2

    from spearfl.cli.progress import RichObserver
    from spearfl.federation.simulation import simulate
    from spearfl.federation.worker import forget_policy

    for name, cfg in configs.items():
        run_dir = Path(cfg.output_dir)
        state = run_state(run_dir)
        if state.status == "complete":
            continue
        print(f"{name}: {'resuming' if state.status == 'interrupted' else 'running'} {run_dir}")
        forget_policy()  # each run starts from the same freshly initialised adapter
        observer = RichObserver(cfg.fl.rounds, completed=state.last_round or 0)
        try:
            simulate(cfg, run_dir, observer, resume=state.status == "interrupted")
        except RunInterrupted as stopped:
            observer.close()
            return report_interrupt(
                stopped, "the same spearfl compare command (complete runs are kept)"
            )
        finally:
            observer.close()

    problems = {n: rounds_problem(Path(c.output_dir), c) for n, c in configs.items()}
    for name, problem in problems.items():
        if problem:
            print(f"spearfl: {name}: not compared: {problem}", file=sys.stderr)
    if any(problems.values()):
        return 1
    source = args.config or "the embedded demo config"
    note = f"Config: {source}; every run identical except `algorithm.name`"
    if seeds is None:
        from spearfl.reporting.comparison import write_comparison

        runs = {n: c.output_dir for n, c in configs.items()}
        md, png = write_comparison(runs, root, note + ".", pair)
    else:
        from spearfl.reporting.seeds import write_seed_comparison

        note += f" and, per seed, `data.seed` ({', '.join(map(str, seeds))})."
        md, png = write_seed_comparison(root, names, seeds, target=target, note=note)
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
        "--seeds",
        metavar="S,S,...",
        help="run every algorithm once per seed (data.seed), into DIR/seed-S/<algorithm>/, and "
        "report means with paired 95%% bootstrap intervals (default: the config's one seed)",
    )
    compare.add_argument(
        "--target",
        metavar="NAME",
        help="the algorithm compared against each of the others in the report (default: spear "
        "when it runs, else the first of --algorithms)",
    )
    compare.add_argument(
        "--baseline",
        metavar="NAME",
        help="the algorithm the target's cost (tokens, completions, memory) is divided by in the "
        "report (default: grpo when it runs; none: no such line)",
    )
    compare.add_argument(
        "--output-dir",
        help="comparison folder; runs go to DIR/<algorithm>/ (default: <output_dir>-compare)",
    )
    compare.add_argument(
        "--overwrite",
        action="store_true",
        help="move aside (to DIR/<algorithm>.old-<time>) and rerun the runs that hold other "
        "settings; complete runs of these settings are kept, interrupted ones resume",
    )
    compare.set_defaults(func=run_compare)
