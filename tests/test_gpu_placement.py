"""Simulated clients on GPUs: each Ray actor's GPU share, and no more actors than clients per
round, as Flower's Ray backend sizes its pool from our settings."""

from __future__ import annotations

import pytest

from spearfl.config import load_config
from spearfl.federation.simulation import actor_cpus, backend_config, gpu_share


@pytest.mark.parametrize(
    ("gpus", "clients", "share"),
    [
        (0, 5, 0.0),  # no CUDA: CPU actors
        (1, 5, 0.2),  # five clients side by side on one GPU
        (1, 3, 0.3333),  # floored to Ray's 1e-4 precision: three still fit
        (2, 5, 0.3333),  # three per GPU, not 0.4: a share cannot span two GPUs
        (4, 4, 1.0),
        (8, 3, 1.0),  # more GPUs than clients: one each, never more
    ],
)
def test_auto_gpu_share(gpus, clients, share):
    assert gpu_share(gpus, clients, None) == share


def test_auto_share_packs_every_round_onto_the_visible_gpus():
    for gpus in range(1, 5):
        for clients in range(1, 17):
            share = gpu_share(gpus, clients, None)
            per_gpu = int(1 / share + 1e-9)
            assert per_gpu * share <= 1.0
            assert per_gpu * gpus >= clients, (gpus, clients)


def test_a_requested_share_is_kept_as_given():
    assert gpu_share(1, 5, 0.5) == 0.5
    assert gpu_share(0, 5, 0.25) == 0.25  # whether it can be met is checked before the run
    assert gpu_share(2, 5, 0.0) == 0.0


def test_actor_cpus_cover_one_round_at_most():
    assert actor_cpus(16, 5, 2.0) == 10.0
    assert actor_cpus(2, 5, 2.0) == 2.0  # the machine has fewer: fewer actors, as before
    assert actor_cpus(16, 3, 1.5) == 4.5


def test_backend_config_from_the_config():
    cfg = load_config(None, ["fl.clients_per_round=5", "fl.num_cpus_per_client=2"])
    assert cfg.fl.num_gpus_per_client is None  # auto by default
    conf = backend_config(cfg, gpus=2, cpus=32)
    assert conf["client_resources"] == {"num_cpus": 2.0, "num_gpus": 0.3333}
    assert (conf["init_args"]["num_cpus"], conf["init_args"]["num_gpus"]) == (10.0, 2)
    fixed = load_config(None, ["fl.num_gpus_per_client=1"])
    assert backend_config(fixed, gpus=0, cpus=4)["client_resources"]["num_gpus"] == 1.0


@pytest.mark.slow
def test_flower_starts_one_actor_per_client_of_a_round(monkeypatch):
    """Flower's own pool sizing, on a Ray cluster started with our init args (the GPUs are
    declared to Ray, which does not check them: this runs on a CPU-only machine too)."""
    import ray
    from flwr.simulation.ray_transport.ray_actor import pool_size_from_resources

    cfg = load_config(None, ["fl.clients_per_round=5", "fl.num_cpus_per_client=1"])
    conf = backend_config(cfg, gpus=2, cpus=16)
    assert not ray.is_initialized()
    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # as simulate() sets it
    ray.init(**conf["init_args"], include_dashboard=False)
    try:
        assert pool_size_from_resources(conf["client_resources"]) == 5
    finally:
        ray.shutdown()
