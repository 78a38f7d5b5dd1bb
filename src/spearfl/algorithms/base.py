"""The client-update interface every algorithm implements (SPEAR and the baselines)."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from spearfl.config import Config
from spearfl.feedback.base import FeedbackProvider
from spearfl.models.policy import Policy
from spearfl.tasks.base import Example, Task


@dataclass
class ClientUpdateResult:
    adapter: dict[str, torch.Tensor]
    n_eff: float
    """FedAvg weight of this client's adapter."""
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RoundContext:
    """What a client knows about the round it is taking part in."""

    round_num: int
    total_rounds: int
    client_id: int
    seed: int
    device_dir: str | None = None
    """The device's own folder (its feedback inbox), for the ``human`` feedback provider."""

    def rng(self, purpose: str) -> random.Random:
        """A generator that depends only on (seed, round, client, purpose): reruns repeat."""
        return random.Random(f"{self.seed}-{self.round_num}-{self.client_id}-{purpose}")


class ClientAlgorithm(ABC):
    """Turns the received global adapter and the client's examples into a new adapter."""

    name: str = "algorithm"

    def __init__(self, cfg: Config, policy: Policy, task: Task, provider: FeedbackProvider) -> None:
        self.cfg = cfg
        self.policy = policy
        self.task = task
        self.provider = provider

    @abstractmethod
    def update(
        self,
        global_adapter: dict[str, torch.Tensor],
        examples: Sequence[Example],
        ctx: RoundContext,
    ) -> ClientUpdateResult:
        """Run one round of local work starting from ``global_adapter``."""
