"""Run the ServerApp and ClientApp on Flower's simulation engine, in one process tree."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from flwr.clientapp import ClientApp
from flwr.simulation import run_simulation

from spearfl.config import Config
from spearfl.federation.client_app import app as default_client_app
from spearfl.federation.server import RoundObserver
from spearfl.federation.server_app import build_server_app


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


def simulate(
    cfg: Config,
    run_dir: Path,
    observer: RoundObserver | None = None,
    *,
    resume: bool = False,
    client_app: ClientApp | None = None,
    before_round: Callable[[int], None] | None = None,
) -> dict:
    """Run every round (from the last checkpoint when ``resume``); returns the run's summary.

    Client work runs in Ray actors. ``client_app`` replaces the standard ClientApp (tests use
    it to make clients fail or misbehave).
    """
    fl = cfg.fl
    # Set before Ray starts, so client workers inherit them: quiet workers, no hub access.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if cfg.hf.offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    _quiet_flower()
    result: dict = {}
    server_app = build_server_app(
        cfg, run_dir, observer, result, resume=resume, before_round=before_round
    )
    backend_config = {
        "client_resources": {
            "num_cpus": fl.num_cpus_per_client,
            "num_gpus": fl.num_gpus_per_client,
        },
        "init_args": {"logging_level": logging.ERROR, "log_to_driver": True},
    }
    run_simulation(
        server_app=server_app,
        client_app=client_app or default_client_app,
        num_supernodes=cfg.data.num_clients,
        backend_config=backend_config,
    )
    if not result:
        raise RuntimeError(f"the simulation ended without finishing the run; see {run_dir}")
    return result
