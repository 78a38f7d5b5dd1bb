"""``spearfl check CONFIG [--set ...]``: what a run of CONFIG would use, and what would stop it.

It resolves the config, the task and every data row, the client partition, the model's and
tokenizer's files (no weights are loaded), the prompt format and the devices, then prints the
resolved config, notes on settings that change nothing here, and every difference from the
paper's own code. It fails exactly as ``spearfl run`` would: ``run``, ``compare`` and ``serve``
call :func:`checked_before_work` before any work.
"""

from __future__ import annotations

import argparse
import sys

from spearfl.cli.options import config_source, load_or_report
from spearfl.config import Config
from spearfl.preflight import Preflight, PreflightError, preflight


def checked_before_work(cfg: Config, debug: bool, show_notes: bool = True) -> Preflight | None:
    """The preflight of ``cfg``, its notes printed once; None after printing the one line that
    says why the run cannot start (``debug``: raise it with its traceback instead)."""
    try:
        checked = preflight(cfg)
    except PreflightError as err:
        if debug:
            raise
        print(f"spearfl: {err}", file=sys.stderr)
        return None
    if show_notes:
        for note in checked.notes:
            print(f"note: {note}", file=sys.stderr)
    return checked


def render(checked: Preflight) -> str:
    """The report ``spearfl check`` prints."""
    cfg = checked.cfg
    sizes = checked.client_sizes
    model, tokenizer = checked.model, checked.tokenizer
    layers = f" ({model.num_layers} decoder layers)" if model.num_layers else ""
    tok = "the model's" if tokenizer is model else f"{tokenizer.name}: {tokenizer.where}"
    lines = [
        "# resolved configuration",
        cfg.to_yaml().rstrip(),
        "",
        "# what a run would use",
        f"task:      {checked.task_name} (data.dataset {cfg.data.dataset!r}): "
        f"{checked.train_examples} training examples, {checked.eval_examples} for evaluation "
        f"from {checked.eval_split}; {checked.skipped_rows} malformed rows skipped",
        f"clients:   {len(sizes)}, {min(sizes)}-{max(sizes)} examples each "
        f"(Dirichlet alpha {cfg.data.dirichlet_alpha:g}, seed {cfg.data.seed})",
        f"model:     {model.name}: {model.where}{layers}",
        f"tokenizer: {tok}; prompt format: {checked.prompt_format}",
        f"algorithm: {cfg.algorithm.name}, feedback provider {cfg.feedback.provider}",
        f"devices:   {checked.devices}",
    ]
    if checked.notes:
        lines += ["", "# notes", *(f"- {note}" for note in checked.notes)]
    if checked.differences:
        lines += ["", "# differences from the paper's code (SPEC §8)"]
        lines += [f"- {d.line()}" for d in checked.differences]
    lines += ["", "ok: spearfl run would start with this configuration"]
    return "\n".join(lines)


def run_check(args: argparse.Namespace) -> int:
    cfg = load_or_report(*config_source(args))
    if cfg is None:
        return 2
    checked = checked_before_work(cfg, args.debug, show_notes=False)
    if checked is None:
        return 2
    print(render(checked))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``spearfl check`` on the main parser's subcommands."""
    check = sub.add_parser(
        "check", help="resolve and check a config as a run would, without loading the model"
    )
    check.add_argument("config", nargs="?", help="YAML config (default: the embedded demo)")
    check.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable)",
    )
    check.add_argument("--output-dir", help="run directory (overrides output_dir)")
    check.set_defaults(func=run_check)
