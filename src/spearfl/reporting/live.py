"""Live views of a run: TensorBoard event files and, when it is set up, Weights & Biases.

``logging.report_to`` lists them. They are round observers: the server hands every finished
round's history entry to its observer, and these turn the entry into scalars (step = round):

- ``eval/<name>``: every number of the round's evaluation (accuracy, option accuracy, valid
  rate, seconds, ...);
- ``round/<name>``: the round over its clients: sums of counts, tokens and seconds, the share
  of right first answers, means of learning rate and losses, the largest peak and current
  memory;
- ``server/<name>``: the server process's memory (``rss_mb`` after aggregation,
  ``rss_after_eval_mb``, ``peak_rss_mb``);
- ``client_<id>/<name>``: every number a client reported.

The history entry is what is logged, so TensorBoard shows exactly what ``history.jsonl`` holds.
A resumed run redoes the rounds after its checkpoint; its TensorBoard writer starts with
``purge_step`` at its first round, which makes TensorBoard drop whatever an interrupted process
had logged from that round on, so no step appears twice.
"""

from __future__ import annotations

import logging
import math
import netrc
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from spearfl.config import Config
from spearfl.federation.server import RoundObserver
from spearfl.reporting.comparison import first_answers
from spearfl.reporting.history import client_updates

__all__ = [
    "TENSORBOARD_DIR",
    "ObserverGroup",
    "TensorBoardObserver",
    "WandbObserver",
    "report_observers",
    "reporting_to",
    "round_scalars",
    "wandb_or_reason",
]

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_run_id"

ROUND_SUMS = (
    "wins",
    "losses",
    "tokens_generated",
    "completions_generated",
    "rollout_seconds",
    "train_seconds",
    "revisions_attempted",
    "revisions_successful",
)
ROUND_MEANS = ("lr", "mean_loss", "mean_win_loss", "mean_lose_loss")
ROUND_MAXIMA = ("peak_rss_mb", "rss_mb")
SERVER_MEMORY = ("server_rss_mb", "server_rss_after_eval_mb", "server_peak_rss_mb")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _numbers(data: Mapping[str, Any]) -> dict[str, float]:
    found = {key: _number(value) for key, value in data.items()}
    return {key: value for key, value in found.items() if value is not None}


def _over_clients(updates: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    scalars: dict[str, float] = {}
    for keys, combine in (
        (ROUND_SUMS, sum),
        (ROUND_MEANS, lambda v: sum(v) / len(v)),
        (ROUND_MAXIMA, max),
    ):
        for key in keys:
            values = [v for v in (_number(u.get(key)) for u in updates) if v is not None]
            if values:
                scalars[f"round/{key}"] = float(combine(values))
    firsts = [f for f in map(first_answers, updates) if f is not None]
    asked = sum(total for _, total in firsts)
    if asked:
        scalars["round/first_answer_accuracy"] = sum(right for right, _ in firsts) / asked
    return scalars


def round_scalars(entry: Mapping[str, Any]) -> dict[str, float]:
    """Tag -> value for one history entry (see the module's docstring for the tags)."""
    scalars: dict[str, float] = {}
    ev = entry.get("eval")
    if isinstance(ev, Mapping):
        scalars.update({f"eval/{k}": v for k, v in _numbers(ev).items()})
    metrics = entry.get("client_metrics") or {}
    updates = client_updates(entry)
    if updates:
        scalars["round/clients"] = float(len(updates))
        scalars.update(_over_clients(updates))
    seconds = _number(entry.get("seconds"))
    if seconds is not None:
        scalars["round/seconds"] = seconds
    for key in SERVER_MEMORY:
        value = _number(entry.get(key))
        if value is not None:
            scalars[f"server/{key.removeprefix('server_')}"] = value
    for client, values in metrics.items():
        if isinstance(values, Mapping):
            own = _numbers(values)
            own.pop("client_id", None)
            own.pop("client_pid", None)  # which process served it: a label, not a measure
            scalars.update({f"client_{client}/{k}": v for k, v in own.items()})
    return scalars


class ObserverGroup(RoundObserver):
    """Hands every hook to each of several observers, in order."""

    def __init__(self, observers: Sequence[RoundObserver]) -> None:
        self.observers = list(observers)

    def round_started(self, round_num: int, clients: list[int]) -> None:
        for o in self.observers:
            o.round_started(round_num, clients)

    def client_done(self, round_num: int, client_id: int, metrics: dict[str, float]) -> None:
        for o in self.observers:
            o.client_done(round_num, client_id, metrics)

    def client_failed(self, round_num: int, client_id: int, reason: str) -> None:
        for o in self.observers:
            o.client_failed(round_num, client_id, reason)

    def round_done(self, entry: dict[str, Any]) -> None:
        for o in self.observers:
            o.round_done(entry)

    def evaluating(self, round_num: int) -> None:
        for o in self.observers:
            o.evaluating(round_num)


class TensorBoardObserver(RoundObserver):
    """Event files under ``RUN_DIR/tensorboard/``, flushed after every round."""

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        self.log_dir = Path(log_dir)
        self.writer: Any = None

    def round_done(self, entry: dict[str, Any]) -> None:
        step = int(entry["round"])
        if self.writer is None:  # opened at the first round this process runs: see purge_step
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=step)
        for tag, value in round_scalars(entry).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbObserver(RoundObserver):
    """One W&B run per run directory; a resumed run continues it (its id is kept in the run
    directory), and W&B ignores steps below the last one it has, so nothing is logged twice."""

    def __init__(self, wandb: ModuleType, cfg: Config, run_dir: str | os.PathLike[str]) -> None:
        folder = Path(run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / WANDB_ID_FILE
        if not id_file.is_file():
            id_file.write_text(uuid.uuid4().hex[:16] + "\n", encoding="utf-8")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "spearfl"),
            name=folder.name,
            id=id_file.read_text(encoding="utf-8").strip(),
            resume="allow",
            dir=str(folder),
            config=cfg.to_dict(),
        )

    def round_done(self, entry: dict[str, Any]) -> None:
        self.run.log(round_scalars(entry), step=int(entry["round"]))

    def close(self) -> None:
        self.run.finish()


def _wandb_login_saved() -> bool:
    """Whether ``wandb login`` stored a key (in ``~/.netrc``, for the W&B host)."""
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_or_reason() -> ModuleType | str:
    """The ``wandb`` module when W&B can be used, else why not (for one clear message)."""
    try:
        import wandb
    except ImportError:
        return "the wandb package is not installed (pip install wandb)"
    offline = os.environ.get("WANDB_MODE") in ("offline", "disabled")
    if not (offline or os.environ.get("WANDB_API_KEY") or _wandb_login_saved()):
        return "no W&B key is set (set WANDB_API_KEY or run `wandb login`)"
    return wandb


def report_observers(
    cfg: Config, run_dir: str | os.PathLike[str]
) -> list[TensorBoardObserver | WandbObserver]:
    """The live views ``logging.report_to`` asks for; W&B, when it cannot be used, is left out
    with a warning and the run goes on."""
    observers: list[TensorBoardObserver | WandbObserver] = []
    for name in cfg.logging.report_to:
        if name == "tensorboard":
            observers.append(TensorBoardObserver(Path(run_dir) / TENSORBOARD_DIR))
        elif name == "wandb":
            found = wandb_or_reason()
            if isinstance(found, str):
                log.warning("logging.report_to lists wandb, but %s; going on without W&B", found)
            else:
                observers.append(WandbObserver(found, cfg, run_dir))
    return observers


@contextmanager
def reporting_to(
    cfg: Config, run_dir: str | os.PathLike[str], observer: RoundObserver
) -> Iterator[RoundObserver]:
    """``observer`` together with the run's live views, which are closed when the run ends."""
    reporters = report_observers(cfg, run_dir)
    try:
        yield ObserverGroup([observer, *reporters]) if reporters else observer
    finally:
        for reporter in reporters:
            reporter.close()
