"""Run the ServerApp and ClientApp on Flower's simulation engine, in one process tree.

Ctrl-C and SIGTERM stop it cleanly (``federation.interrupt``): the round in flight is dropped,
Ray is shut down, and ``RunInterrupted`` tells the caller where the run stands. Ray processes
that a killed run left behind are stopped before a new run starts (``ray_leftovers``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

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

    Client work runs in Ray actors. ``client_app`` replaces the standard ClientApp (tests use
    it to make clients fail or misbehave). ``stop`` (set by SIGINT/SIGTERM, or by the caller)
    ends the run at the next check: ``RunInterrupted`` is raised after Ray is shut down, with
    the checkpoint at the last complete round.
    """
    fl = cfg.fl
    run_dir = Path(run_dir)
    # Set before Ray starts, so client workers inherit them: quiet workers, no hub access.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Flower's logger in the workers: errors only (its "Manually terminating ClientAppActor"
    # warning closed every run); this process's Flower logger is configured already.
    os.environ.setdefault("FLWR_LOG_LEVEL", "ERROR")
    if cfg.hf.offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    _quiet_flower()
    stop = stop or threading.Event()
    received: list[int] = []
    result: dict = {}
    threads: list[threading.Thread] = []
    server_app = build_server_app(
        cfg,
        run_dir,
        observer,
        result,
        resume=resume,
        before_round=before_round,
        stop=stop,
        threads=threads,
    )
    init_args = {"logging_level": logging.ERROR, "log_to_driver": True}
    backend_config = {
        "client_resources": {
            "num_cpus": fl.num_cpus_per_client,
            "num_gpus": fl.num_gpus_per_client,
        },
        "init_args": init_args,
    }
    flwr_logger = logging.getLogger("flwr")
    flwr_level = flwr_logger.level
    # While Ray starts, a signal only sets ``stop`` (an interrupted ray.init leaves processes
    # that ray.shutdown cannot reach); once it is up, the first signal also unwinds Flower.
    with stop_on_signals(stop, received, raise_in_main=False):
        try:
            _stop_leftover_ray()
            try:
                _start_ray(init_args)
            except SystemExit:  # ray.init's own SIGTERM handler, before ours is back
                stop.set()
                received.append(signal.SIGTERM)
            install_handlers(stop, received, raise_in_main=True)
            if not stop.is_set():
                run_simulation(
                    server_app=server_app,
                    client_app=client_app or default_client_app,
                    num_supernodes=cfg.data.num_clients,
                    backend_config=backend_config,
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
    if result:
        return result
    if stop.is_set():
        raise RunInterrupted(run_dir, checkpoint_round(run_dir), next(iter(received), None))
    raise RuntimeError(f"the simulation ended without finishing the run; see {run_dir}")
