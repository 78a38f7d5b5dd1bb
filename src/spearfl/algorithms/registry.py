"""Algorithm name (``algorithm.name``) to client-update class."""

from __future__ import annotations

from spearfl.algorithms.base import ClientAlgorithm
from spearfl.algorithms.feedback_sft import FeedbackSFTUpdate
from spearfl.algorithms.grpo import GRPOUpdate
from spearfl.algorithms.opsd import OPSDUpdate
from spearfl.algorithms.rltf_sd import RLTFSDUpdate
from spearfl.algorithms.spear import SpearUpdate
from spearfl.config import Config
from spearfl.feedback.base import FeedbackProvider
from spearfl.models.policy import Policy
from spearfl.tasks.base import Task

ALGORITHMS: dict[str, type[ClientAlgorithm]] = {
    "spear": SpearUpdate,
    "grpo": GRPOUpdate,
    "rltf_sd": RLTFSDUpdate,
    "feedback_sft": FeedbackSFTUpdate,
    "opsd": OPSDUpdate,
}


def build_algorithm(
    cfg: Config, policy: Policy, task: Task, provider: FeedbackProvider
) -> ClientAlgorithm:
    name = cfg.algorithm.name
    if name not in ALGORITHMS:
        raise ValueError(
            f"algorithm.name: {name!r} is not implemented yet; available: {', '.join(ALGORITHMS)}"
        )
    return ALGORITHMS[name](cfg, policy, task, provider)
