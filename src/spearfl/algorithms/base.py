"""The client-update interface every algorithm implements (SPEAR and the baselines)."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from spearfl.config import Config
from spearfl.feedback.base import FeedbackProvider
from spearfl.models.policy import Policy
from spearfl.tasks.base import Example, Task

METRIC_MEANING_KEYS = ("n_eff", "wins", "losses")
"""The counts whose meaning differs between algorithms: each update class says what its own are
(``METRIC_MEANINGS``), and the configuration reference prints them side by side."""


@dataclass(frozen=True)
class ClientMetrics(Mapping[str, float]):
    """What a client update reports, by the same names for every algorithm, plus its extras.

    The comparison, the round table and the curves read only the typed fields; an algorithm adds
    whatever else it measures in ``extras`` (numbers only: they travel in a Flower
    ``MetricRecord``). The client app adds what it measures itself, the same way for every
    algorithm: ``n_eff`` (the update's weight), memory, process and timing. As a mapping it reads
    like the flat record that goes into ``history.jsonl``.
    """

    tokens_generated: float
    """Tokens the client generated this round: answers, revisions, group samples."""
    completions_generated: float
    """Completions generated: every answer, revision and group sample."""
    rollout_seconds: float
    train_seconds: float
    y0_accuracy: float
    """Share of right first answers (before any feedback) among the prompts answered."""
    wins: float
    losses: float
    trained: bool
    """Whether any optimiser step ran (False: the received adapter went back unchanged)."""
    extras: Mapping[str, float] = field(default_factory=dict)

    COMMON: ClassVar[tuple[str, ...]] = (
        "tokens_generated",
        "completions_generated",
        "rollout_seconds",
        "train_seconds",
        "y0_accuracy",
        "wins",
        "losses",
        "trained",
    )

    @classmethod
    def from_values(cls, values: Mapping[str, float | int | bool]) -> ClientMetrics:
        """Split a flat mapping into the typed fields and the extras; a missing common key or a
        value that is not a number is an error naming the key."""
        missing = [key for key in cls.COMMON if key not in values]
        if missing:
            raise ValueError(f"a client update must report {', '.join(missing)}")
        for key, value in values.items():
            if not isinstance(value, (int, float)):
                raise ValueError(f"client metric {key!r} must be a number, got {value!r}")
        common = {key: float(values[key]) for key in cls.COMMON}
        common["trained"] = bool(values["trained"])
        extras = {k: float(v) for k, v in values.items() if k not in cls.COMMON}
        return cls(**common, extras=extras)  # type: ignore[arg-type]

    def to_record(self) -> dict[str, float]:
        """The flat numbers a Flower ``MetricRecord`` carries and ``history.jsonl`` keeps."""
        record = {key: float(getattr(self, key)) for key in self.COMMON}
        return {**record, **self.extras}

    def __getitem__(self, key: str) -> float:
        if key in self.COMMON:
            return float(getattr(self, key))
        return self.extras[key]

    def __iter__(self) -> Iterator[str]:
        yield from self.COMMON
        yield from (k for k in self.extras if k not in self.COMMON)

    def __len__(self) -> int:
        return len(self.COMMON) + len(self.extras)


@dataclass
class ClientUpdateResult:
    adapter: dict[str, torch.Tensor]
    n_eff: float
    """FedAvg weight of this client's adapter (what it counts: the class's ``METRIC_MEANINGS``)."""
    metrics: ClientMetrics
    """A flat mapping is accepted and checked into :class:`ClientMetrics`."""

    def __post_init__(self) -> None:
        if not isinstance(self.metrics, ClientMetrics):
            self.metrics = ClientMetrics.from_values(self.metrics)


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
    """Set by :func:`~spearfl.algorithms.registry.register_algorithm`."""
    METRIC_MEANINGS: ClassVar[Mapping[str, str]] = {}
    """What this algorithm's ``n_eff``, ``wins`` and ``losses`` count, in words."""

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
