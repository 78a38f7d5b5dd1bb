"""Run the ServerApp and ClientApp on Flower's simulation engine, in one process tree.

:func:`simulate_runs` runs several experiments one after another in one simulation: Ray starts
once (15-20 s) and the ClientApp builds its worker from the config each message carries.
Ctrl-C and SIGTERM stop it cleanly (``federation.interrupt``): the round in flight is dropped,
Ray is shut down, and ``RunInterrupted`` tells the caller where the run stands. Ray processes
that a killed run left behind are stopped before a new run starts (``ray_leftovers``).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from flwr.clientapp import ClientApp
from flwr.simulation import run_simulation

from spearfl.config import Config
from spearfl.federation import ray_leftovers
from spearfl.federation.checkpoint import checkpoint_round
from spearfl.federation.client_app import app as default_client_app
from spearfl.federation.interrupt import (
    RunInterrupted,
    Signalled,
    install_handlers,
    stop_on_signals,
)
from spearfl.federation.server import RoundObserver
from spearfl.federation.server_app import build_server_app
from spearfl.hub import apply_hf_settings

log = logging.getLogger(__name__)

SERVER_GRACE_SECONDS = 5.0
"""How long an interrupted run waits for its server thread (it notices a stop within 0.2 s
unless it is in the middle of an evaluation)."""


class _DropNotice(logging.Filter):
    """Hides Flower's notice that the programmatic simulation entry point is deprecated.

    ``run_simulation`` is still Flower's way to run a ServerApp object built in this process;
    the notice would otherwise open every run.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "run_simulation` function is deprecated" not in record.getMessage()


def _quiet_flower() -> None:
    flwr_logger = logging.getLogger("flwr")
    if not any(isinstance(f, _DropNotice) for f in flwr_logger.filters):
        flwr_logger.addFilter(_DropNotice())


def gpu_share(visible_gpus: int, clients_per_round: int, requested: float | None) -> float:
    """The GPU share of one client actor (``fl.num_gpus_per_client``; None = auto).

    Auto: 0 without a GPU; otherwise ``1 / ceil(clients_per_round / visible_gpus)``, so one
    round's clients run side by side, packed onto whole GPUs (Ray cannot split one actor's
    share across two GPUs), floored to Ray's resource precision of 1e-4 so that k shares of
    ``1/k`` still fit on one GPU. At most 1: a client model uses one device.
    """
    if requested is not None:
        return requested
    if visible_gpus <= 0:
        return 0.0
    per_gpu = math.ceil(clients_per_round / visible_gpus)
    return math.floor(1e4 / per_gpu) / 1e4


def actor_cpus(available_cpus: int, clients_per_round: int, cpus_per_client: float) -> float:
    """CPUs to give Ray: room for one round's clients, never more than the machine has.

    Flower's Ray backend starts ``min(CPUs / num_cpus, GPUs / num_gpus)`` actors at once, each
    loading the base model on first use; more actors than clients per round would only hold
    memory (a CUDA context each on a GPU).
    """
    return float(min(available_cpus, clients_per_round * cpus_per_client))


def visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def backend_config(cfg: Config, gpus: int, cpus: int) -> dict[str, Any]:
    """Flower's Ray backend settings: each actor's resources and the cluster's (``ray.init``)."""
    fl = cfg.fl
    return {
        "client_resources": {
            "num_cpus": fl.num_cpus_per_client,
            "num_gpus": gpu_share(gpus, fl.clients_per_round, fl.num_gpus_per_client),
        },
        "init_args": {
            "logging_level": logging.ERROR,
            "log_to_driver": True,
            "num_cpus": actor_cpus(cpus, fl.clients_per_round, fl.num_cpus_per_client),
            "num_gpus": gpus,
        },
    }


def _stop_leftover_ray() -> None:
    """Stop (or at least name) the Ray processes a killed earlier run left behind."""
    stopped, failed = ray_leftovers.stop_leftovers()
    if stopped:
        log.warning(
            "stopped %d Ray process(es) left behind by a run that was killed: %s",
            len(stopped),
            ray_leftovers.describe(stopped),
        )
    if failed:
        log.warning(
            "Ray processes left behind by a killed run could not be stopped: %s",
            ray_leftovers.describe(failed),
        )


def _start_ray(init_args: dict) -> None:
    """``ray.init`` as Flower's Ray backend would call it (the driver's import path passed to
    the workers), done here so that the signal handlers can be put back after it: ``ray.init``
    replaces SIGTERM's handler with one that exits at once."""
    import ray

    if ray.is_initialized():
        return
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    ray.init(
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, include_dashboard=False, **init_args
    )


def _join(threads: list[threading.Thread]) -> None:
    """Give the server thread a few seconds to notice the stop; a signal meanwhile only adds
    to the stop already under way."""
    for thread in threads:
        try:
            thread.join(timeout=SERVER_GRACE_SECONDS)
        except Signalled:
            thread.join(timeout=SERVER_GRACE_SECONDS)


def _shutdown_ray() -> None:
    """Also after an interrupted start: ray.shutdown stops whatever ray.init had started."""
    import ray

    ray.shutdown()


def simulate(
    cfg: Config,
    run_dir: Path,
    observer: RoundObserver | None = None,
    *,
    resume: bool = False,
    client_app: ClientApp | None = None,
    before_round: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> dict:
    """Run every round (from the last checkpoint when ``resume``); returns the run's summary.

    Client work runs in Ray actors, at most one per client of a round, each with its GPU share
    (``backend_config``). ``client_app`` replaces the standard ClientApp (tests use it to make
    clients fail or misbehave). ``stop`` (set by SIGINT/SIGTERM, or by the caller) ends the run
    at the next check: ``RunInterrupted`` is raised after Ray is shut down, with the checkpoint
    at the last complete round.
    """
    return simulate_runs(
        [(cfg, run_dir)],
        observer,
        resume=resume,
        client_app=client_app,
        before_round=before_round,
        stop=stop,
    )[0]


def simulate_runs(
    runs: Sequence[tuple[Config, Path]],
    observer: RoundObserver | None = None,
    *,
    resume: bool = False,
    client_app: ClientApp | None = None,
    before_round: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> list[dict]:
    """Run each ``(config, run directory)`` in turn on one simulation; their summaries.

    Ray starts once for all of them, with as many SuperNodes as the largest ``num_clients``; the
    runs must agree on the resources of a client (``fl.num_cpus_per_client`` /
    ``num_gpus_per_client``) and on the ``hf`` section, which are fixed when Ray starts. An
    interrupt raises ``RunInterrupted`` for the run that was in flight.
    """
    if not runs:
        return []
    runs = [(c, Path(d)) for c, d in runs]
    _check_shared_settings([c for c, _ in runs])
    _prepare_workers(runs[0][0])
    stop = stop or threading.Event()
    received: list[int] = []
    results: list[dict] = [{} for _ in runs]
    threads: list[threading.Thread] = []
    server_app = build_server_app(
        runs,
        observer,
        results,
        resume=resume,
        before_round=before_round,
        stop=stop,
        threads=threads,
    )
    # The largest round decides how many actors may run at once.
    widest = max(runs, key=lambda run: run[0].fl.clients_per_round)[0]
    backend = backend_config(widest, visible_gpus(), available_cpus())
    flwr_logger = logging.getLogger("flwr")
    flwr_level = flwr_logger.level
    # While Ray starts, a signal only sets ``stop`` (an interrupted ray.init leaves processes
    # that ray.shutdown cannot reach); once it is up, the first signal also unwinds Flower.
    with stop_on_signals(stop, received, raise_in_main=False):
        try:
            _stop_leftover_ray()
            try:
                _start_ray(backend["init_args"])
            except SystemExit:  # ray.init's own SIGTERM handler, before ours is back
                stop.set()
                received.append(signal.SIGTERM)
            install_handlers(stop, received, raise_in_main=True)
            if not stop.is_set():
                run_simulation(
                    server_app=server_app,
                    client_app=client_app or default_client_app,
                    num_supernodes=max(c.data.num_clients for c, _ in runs),
                    backend_config=backend,
                )
        except (Signalled, RunInterrupted):
            pass
        except BaseException:
            if not stop.is_set():
                raise
        finally:
            if stop.is_set():  # the actors die now; their errors are not the run's
                flwr_logger.setLevel(logging.CRITICAL)
            _shutdown_ray()
            _join(threads)
            flwr_logger.setLevel(flwr_level)
    for (_, run_dir), result in zip(runs, results):
        if result:
            continue
        if stop.is_set():
            raise RunInterrupted(run_dir, checkpoint_round(run_dir), next(iter(received), None))
        raise RuntimeError(f"the simulation ended without finishing the run; see {run_dir}")
    return results


def _check_shared_settings(configs: Sequence[Config]) -> None:
    """The settings fixed when Ray starts must be the same for every run of the simulation."""
    first = configs[0]
    fl = first.fl
    for other in configs[1:]:
        if (other.fl.num_cpus_per_client, other.fl.num_gpus_per_client, other.hf) != (
            fl.num_cpus_per_client,
            fl.num_gpus_per_client,
            first.hf,
        ):
            raise ValueError(
                "runs of one simulation need the same fl.num_cpus_per_client, "
                "fl.num_gpus_per_client and hf section"
            )


def _prepare_workers(cfg: Config) -> None:
    """Set before Ray starts, so client workers inherit them: quiet workers, the hf section."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Flower's logger in the workers: errors only (its "Manually terminating ClientAppActor"
    # warning closed every run); this process's Flower logger is configured already.
    os.environ.setdefault("FLWR_LOG_LEVEL", "ERROR")
    apply_hf_settings(cfg.hf)
    _quiet_flower()
