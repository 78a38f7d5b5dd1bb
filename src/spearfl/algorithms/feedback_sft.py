"""Feedback-SFT baseline (SPEC §4): SPEAR's rollout, then maximum likelihood on the wins only.

It isolates what the unlikelihood term adds: the same traces (wins include feedback-guided
revisions paired with the original prompt), the same micro-batches of wins, with the loss
weight on the losses forced to zero. Losses are still committed, capped and counted in the
metrics, so the two algorithms' round reports line up.
"""

from __future__ import annotations

from dataclasses import replace

from spearfl.algorithms.registry import register_algorithm
from spearfl.algorithms.spear import LossWeights, SpearConfig, SpearUpdate


@register_algorithm("feedback_sft", SpearConfig, human_feedback=True)
class FeedbackSFTUpdate(SpearUpdate):
    """SPEAR with ``spear.lambda_lose = 0`` whatever the config says."""

    METRIC_MEANINGS = {
        **SpearUpdate.METRIC_MEANINGS,
        "losses": "wrong answers, capped as SPEAR caps them, counted but not trained on",
    }

    def weights(self) -> LossWeights:
        # With a zero weight SPEAR's micro-step samples no losses at all, so this equals SPEAR
        # with lambda_lose=0 down to the random batches drawn.
        return replace(super().weights(), lose=0.0)
