"""``spearfl sweep``: one config over a grid of values and several seeds, then one report.

``--grid section.key=a,b,c`` (repeatable) names the values to try; the cells are the cartesian
product of every grid key's values, times the seeds. Each cell is a run directory under the
sweep folder named after its values and seed (``spear.lambda_lose=0.1,seed=42``), run like
``spearfl run`` with ``data.seed`` set to its seed. Every cell's config is validated before the
first run starts. A finished cell is kept, so an interrupted sweep resumes with the cells still
missing; a cell cut off midway starts again from round 0.
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from spearfl.cli.options import parse_seeds
from spearfl.config import Config, ConfigError, load_config
from spearfl.presets import default_config_path
from spearfl.reporting.history import HISTORY_FILE, SUMMARY_FILE

__all__ = [
    "Cell",
    "add_parser",
    "cell_finished",
    "expand_grid",
    "parse_grid",
    "run_sweep",
    "sweep_configs",
]

Grid = list[tuple[str, list[str]]]
FIXED_KEYS = {
    "data.seed": "the seeds of a sweep are given with --seeds",
    "output_dir": "every cell gets its own run directory under --output-dir",
}


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: a value for every grid key, and a seed."""

    settings: tuple[tuple[str, str], ...]
    seed: int

    @property
    def name(self) -> str:
        """The run directory's name: the values and the seed, as they read on the command line
        (characters a file name should not hold become ``_``)."""
        text = ",".join([*(f"{k}={v}" for k, v in self.settings), f"seed={self.seed}"])
        return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)

    def overrides(self, root: Path) -> list[str]:
        return [
            *(f"{k}={v}" for k, v in self.settings),
            f"data.seed={self.seed}",
            f"output_dir={root / self.name}",
        ]


def parse_grid(items: Sequence[str]) -> Grid:
    """``["section.key=a,b", ...]`` as ``[(key, [a, b]), ...]``, in the order given."""
    grid: Grid = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not sep or not key or not values:
            raise ValueError(f"--grid {item!r}: expected section.key=value,value,...")
        if key in FIXED_KEYS:
            raise ValueError(f"--grid {key}: not a grid key; {FIXED_KEYS[key]}")
        if any(key == seen for seen, _ in grid):
            raise ValueError(f"--grid {key} is given twice; list all its values in one --grid")
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"--grid {key}: value {repeated[0]!r} is listed twice")
        grid.append((key, values))
    if not grid:
        raise ValueError("give at least one --grid section.key=value,value,...")
    return grid


def expand_grid(grid: Grid, seeds: Sequence[int]) -> list[Cell]:
    """Every combination of values (the first key varies slowest), for each seed in turn, so
    an interrupted sweep has whole seeds done first."""
    combos = list(itertools.product(*([(key, v) for v in values] for key, values in grid)))
    return [Cell(tuple(combo), seed) for seed in seeds for combo in combos]


def cell_finished(run_dir: Path) -> bool:
    """Whether a cell's run is complete, so that a resumed sweep keeps it."""
    return (run_dir / SUMMARY_FILE).is_file()


def _check_grid(path: Path, overrides: Sequence[str], grid: Grid) -> None:
    """Each grid value as a --set item would be checked; errors name the --grid item."""
    for key, values in grid:
        where = f"--grid {key}={','.join(values)}"
        parsed = []
        for value in values:
            try:
                parsed.append(load_config(path, [*overrides, f"{key}={value}"]).get(key))
            except ConfigError as err:
                raise err.at(where) from None
        for i, value in enumerate(parsed):
            if value in parsed[:i]:
                raise ValueError(f"{where}: {values[i]!r} is the same value as an earlier one")


def sweep_configs(
    path: Path, overrides: Sequence[str], grid: Grid, seeds: Sequence[int], root: Path
) -> list[tuple[Cell, Config]]:
    """Every cell with its validated config (raises ConfigError or ValueError first)."""
    load_config(path, overrides)
    _check_grid(path, overrides, grid)
    cells = expand_grid(grid, seeds)
    names = [cell.name for cell in cells]
    clash = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if clash is not None:
        raise ValueError(f"two cells would share the run directory {clash!r}; change a value")
    return [(cell, load_config(path, [*overrides, *cell.overrides(root)])) for cell in cells]


def _run_cell(cfg: Config, run_dir: Path) -> None:
    from spearfl.cli.progress import RichObserver
    from spearfl.federation.simulation import simulate
    from spearfl.federation.worker import forget_policy

    forget_policy()  # each cell starts from its seed's freshly initialised adapter
    observer = RichObserver(cfg.fl.rounds)
    try:
        simulate(cfg, run_dir, observer)
    finally:
        observer.close()


def run_sweep(args: argparse.Namespace) -> int:
    path = Path(args.config) if args.config else default_config_path()
    overrides = list(args.set or [])
    try:
        grid = parse_grid(args.grid or [])
        base = load_config(path, overrides)
        seeds = parse_seeds(args.seeds, base.data.seed)
        root = Path(args.output_dir) if args.output_dir else Path(base.output_dir) / "sweep"
        cells = sweep_configs(path, overrides, grid, seeds, root)
    except ConfigError as err:
        print(f"spearfl: config error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"spearfl: {err}", file=sys.stderr)
        return 2

    from spearfl.reporting.sweep import SweepPoint, write_sweep

    print(f"sweep: {len(cells)} runs into {root}")
    for number, (cell, cfg) in enumerate(cells, start=1):
        run_dir = Path(cfg.output_dir)
        step = f"[{number}/{len(cells)}] {cell.name}"
        if cell_finished(run_dir):
            print(f"{step}: already finished; kept")
            continue
        if (run_dir / HISTORY_FILE).exists():
            print(f"{step}: unfinished; starting it again")
        print(f"{step}: running into {run_dir}")
        _run_cell(cfg, run_dir)

    points: dict[tuple[tuple[str, str], ...], dict[int, Path]] = {}
    for cell, cfg in cells:
        points.setdefault(cell.settings, {})[cell.seed] = Path(cfg.output_dir)
    source = args.config or "the embedded demo config"
    keys = ", ".join(f"`{key}`" for key, _ in grid)
    note = f"Config: {source}; every run identical except {keys} and `data.seed`."
    md, png = write_sweep([SweepPoint(s, runs) for s, runs in points.items()], root, note)
    print(f"sweep report: {md}  {png}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``spearfl sweep`` on the main parser's subcommands."""
    sweep = sub.add_parser(
        "sweep", help="run one config over a grid of values and seeds, and report with intervals"
    )
    sweep.add_argument("config", nargs="?", help="YAML config (default: the embedded demo)")
    sweep.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="SECTION.KEY=V1,V2,...",
        help="values to sweep for one key (repeatable: the cartesian product is run)",
    )
    sweep.add_argument(
        "--seeds",
        metavar="S1,S2,...",
        help="comma-separated seeds (data.seed) for every cell (default: the config's seed)",
    )
    sweep.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a config value for every run (repeatable)",
    )
    sweep.add_argument(
        "--output-dir",
        help="sweep folder; each cell runs in DIR/<values>,seed=S/ (default: <output_dir>/sweep)",
    )
    sweep.set_defaults(func=run_sweep)
