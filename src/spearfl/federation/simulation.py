"""Run the ServerApp and ClientApp on Flower's simulation engine, in one process tree.

:func:`simulate_runs` runs several experiments one after another in one simulation: Ray starts
once (15-20 s) and the ClientApp builds its worker from the config each message carries.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from flwr.clientapp import ClientApp
from flwr.simulation import run_simulation

from spearfl.config import Config
from spearfl.federation.client_app import app as default_client_app
from spearfl.federation.server import RoundObserver
from spearfl.federation.server_app import build_server_app
from spearfl.hub import apply_hf_settings


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
    return simulate_runs(
        [(cfg, run_dir)], observer, resume=resume, client_app=client_app, before_round=before_round
    )[0]


def simulate_runs(
    runs: Sequence[tuple[Config, Path]],
    observer: RoundObserver | None = None,
    *,
    resume: bool = False,
    client_app: ClientApp | None = None,
    before_round: Callable[[int], None] | None = None,
) -> list[dict]:
    """Run each ``(config, run directory)`` in turn on one simulation; their summaries.

    Ray starts once for all of them, with as many SuperNodes as the largest ``num_clients``; the
    runs must agree on the resources of a client (``fl.num_cpus_per_client`` /
    ``num_gpus_per_client``) and on the ``hf`` section, which are fixed when Ray starts.
    """
    if not runs:
        return []
    cfg = runs[0][0]
    fl = cfg.fl
    for other, _ in runs[1:]:
        if (other.fl.num_cpus_per_client, other.fl.num_gpus_per_client, other.hf) != (
            fl.num_cpus_per_client,
            fl.num_gpus_per_client,
            cfg.hf,
        ):
            raise ValueError(
                "runs of one simulation need the same fl.num_cpus_per_client, "
                "fl.num_gpus_per_client and hf section"
            )
    # Set before Ray starts, so client workers inherit them: quiet workers, the hf section.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    apply_hf_settings(cfg.hf)
    _quiet_flower()
    results: list[dict] = [{} for _ in runs]
    server_app = build_server_app(
        [(c, Path(d)) for c, d in runs],
        observer,
        results,
        resume=resume,
        before_round=before_round,
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
        num_supernodes=max(c.data.num_clients for c, _ in runs),
        backend_config=backend_config,
    )
    for (_, run_dir), result in zip(runs, results):
        if not result:
            raise RuntimeError(f"the simulation ended without finishing the run; see {run_dir}")
    return results
