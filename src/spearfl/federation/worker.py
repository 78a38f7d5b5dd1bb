"""What a client process keeps between rounds: the base model, its task data and its algorithm.

Loading a model costs seconds and hundreds of MB, so each process loads it once and keeps it for
every round and every client it serves; a new round only swaps the adapter tensors in.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import torch

from spearfl.algorithms.base import ClientAlgorithm, ClientUpdateResult, RoundContext
from spearfl.algorithms.registry import build_algorithm
from spearfl.config import Config
from spearfl.federation.partition import dirichlet_partition
from spearfl.models.policy import Policy
from spearfl.tasks.base import Example, Task, TaskData
from spearfl.tasks.dataset import DatasetTask
from spearfl.tasks.registry import build_feedback, build_task

log = logging.getLogger(__name__)


def _key(cfg: Config, *sections: str) -> str:
    data = cfg.to_dict()
    return json.dumps({s: data[s] for s in sections}, sort_keys=True)


_POLICIES: dict[str, tuple[Policy, dict[str, torch.Tensor], torch.Tensor]] = {}
"""The process's policy, with its freshly initialised adapter and the torch RNG state after
loading, so a later run can start from exactly that state without loading the model again."""
_DATA: dict[str, tuple[Task, TaskData, list[list[int]]]] = {}


def shared_policy(cfg: Config) -> Policy:
    """The process's policy for this model + LoRA configuration (loaded on first use)."""
    key = _key(cfg, "model", "lora") + str(cfg.data.seed)
    if key not in _POLICIES:
        _POLICIES.clear()  # one base model per process
        torch.manual_seed(cfg.data.seed)
        policy = Policy.from_config(cfg)
        _POLICIES[key] = (policy, policy.get_adapter(), torch.random.get_rng_state())
    return _POLICIES[key][0]


def forget_policy() -> None:
    """Put the process's policy back as it was loaded, so the next run starts from the freshly
    initialised adapter (and the same torch RNG state) without loading the model again.

    The server keeps its policy between runs in one process; without this a second run (as
    ``spearfl compare`` makes) would start from the adapter the first one ended with.
    """
    for policy, adapter, rng in _POLICIES.values():
        policy.set_adapter(adapter)
        torch.random.set_rng_state(rng)


def client_partitions(cfg: Config, data: TaskData) -> list[list[int]]:
    d = cfg.data
    return dirichlet_partition(
        [ex.label for ex in data.train],
        num_clients=d.num_clients,
        alpha=d.dirichlet_alpha,
        seed=d.seed,
        min_size=d.min_examples_per_client,
        max_per_client=d.max_examples_per_client,
        num_classes=d.dirichlet_num_classes,
    )


def shared_task_data(cfg: Config) -> tuple[Task, TaskData, list[list[int]]]:
    """The task, its examples and the client partition (same on every process for a seed)."""
    key = _key(cfg, "data", "feedback", "hf")
    if key not in _DATA:
        _DATA.clear()
        task = build_task(cfg)
        data = task.load()
        _DATA[key] = (task, data, client_partitions(cfg, data))
    return _DATA[key]


@dataclass
class ClientWorker:
    cfg: Config
    policy: Policy
    task: Task
    algorithm: ClientAlgorithm
    examples: list[Example]

    @classmethod
    def for_client(cls, cfg: Config, client_id: int, data_path: str | None = None) -> ClientWorker:
        """The worker of client ``client_id``: its share of the run's dataset, or, with
        ``data_path``, every row of the device's own data file (nothing partitioned)."""
        if not 0 <= client_id < cfg.data.num_clients:
            raise ValueError(f"client id {client_id} outside 0..{cfg.data.num_clients - 1}")
        policy = shared_policy(cfg)
        if data_path:
            task = build_task(cfg)
            if not isinstance(task, DatasetTask):
                raise ValueError(
                    f"data-path is for dataset tasks; {cfg.data.dataset!r} makes its own questions"
                )
            examples = task.examples_from(data_path)[: cfg.data.max_examples_per_client]
        else:
            task, data, parts = shared_task_data(cfg)
            examples = [data.train[i] for i in parts[client_id]]
        provider = build_feedback(cfg, task)
        algorithm = build_algorithm(cfg, policy, task, provider)
        return cls(cfg, policy, task, algorithm, examples)

    def train(
        self,
        adapter: dict[str, torch.Tensor],
        round_num: int,
        client_id: int,
        device_dir: str | None = None,
    ) -> ClientUpdateResult:
        """One round's update; ``device_dir`` (default: the config's folder for this client)
        holds the device's feedback inbox when ``feedback.provider`` is ``human``."""
        folder = device_dir or str(self.cfg.device_dir(client_id))
        ctx = RoundContext(round_num, self.cfg.fl.rounds, client_id, self.cfg.data.seed, folder)
        # Sampling draws from torch's generator: seeding it per (seed, round, client) makes an
        # update independent of which process ran it and what that process did before, so a
        # resumed run and the deployment engine repeat the simulation's updates.
        torch.manual_seed(ctx.rng("torch").getrandbits(63))
        return self.algorithm.update(adapter, self.examples, ctx)
