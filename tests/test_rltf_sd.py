"""RLTF-SD: returns, baselines, advantages and loss weights by hand, and one real round."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import ParityTask, spy_generate
from spearfl.algorithms.base import RoundContext
from spearfl.algorithms.policy_gradient import k3_terms
from spearfl.algorithms.registry import ALGORITHMS
from spearfl.algorithms.rltf_sd import RLTFSDUpdate, rltf_advantages, rltf_row_weights
from spearfl.config import load_config
from spearfl.feedback.oracle import OracleFeedback

T, F = True, False


def _close(tensor: torch.Tensor, expected: list) -> None:
    assert torch.allclose(tensor, torch.tensor(expected), atol=1e-6), (tensor, expected)


# ------------------------------------------------------------ pure maths
def test_advantages_with_early_termination():
    # r0 = [1, 0, 0]; the two wrong ones are revised, with r1 = [1, 0]. The first r1 entry is
    # ignored (no turn 1: r1 = r0).
    adv = rltf_advantages(
        torch.tensor([[1.0, 0.0, 0.0]]),
        torch.tensor([[0.0, 1.0, 0.0]]),
        torch.tensor([[F, T, T]]),
        gamma=1.0,
    )
    _close(adv.r1, [[1.0, 1.0, 0.0]])
    _close(adv.returns, [[2.0, 1.0, 0.0]])
    _close(adv.b0, [[1 / 3]])
    _close(adv.b_return, [[1.0]])
    _close(adv.b1, [[2 / 3]])
    _close(adv.sd, [[2 / 3, 2 / 3, -1 / 3]])  # r1 - b0
    _close(adv.turn0, [[1.0, 0.0, -1.0]])  # R - bR
    _close(adv.turn1, [[0.0, 1 / 3, -2 / 3]])  # r1 - b1, zero without a turn 1


def test_advantages_without_early_termination():
    adv = rltf_advantages(
        torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
        torch.tensor([[0.0, 1.0, 1.0, 0.0]]),
        torch.ones(1, 4, dtype=torch.bool),
        gamma=1.0,
    )
    _close(adv.r1, [[0.0, 1.0, 1.0, 0.0]])
    _close(adv.returns, [[1.0, 1.0, 1.0, 0.0]])
    _close(adv.b0, [[0.25]])
    _close(adv.b_return, [[0.75]])
    _close(adv.b1, [[0.5]])
    _close(adv.sd, [[-0.25, 0.75, 0.75, -0.25]])
    _close(adv.turn0, [[0.25, 0.25, 0.25, -0.75]])
    _close(adv.turn1, [[-0.5, 0.5, 0.5, -0.5]])


def test_advantages_gamma_and_groups_are_separate():
    adv = rltf_advantages(
        torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]),
        torch.tensor([[F, T, T], [T, T, T]]),
        gamma=0.5,
    )
    # group 1: R = [1 + 0.5, 0 + 0.5, 0] = [1.5, 0.5, 0], bR = 2/3
    _close(adv.returns[0], [1.5, 0.5, 0.0])
    _close(adv.turn0[0], [1.5 - 2 / 3, 0.5 - 2 / 3, -2 / 3])
    # group 2: everything wrong twice: no signal at all
    for t in (adv.sd, adv.turn0, adv.turn1):
        _close(t[1], [0.0, 0.0, 0.0])


def test_row_weights_by_hand_and_equal_to_the_loss_definition():
    revised = torch.tensor([[F, T, T]])
    adv = rltf_advantages(
        torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]]), revised, 1.0
    )
    sd_c, rl_c, beta = 0.1, 1.0, 0.02
    w = rltf_row_weights(adv, revised, sd_c, rl_c, beta)
    # (x0, y0): turn-0 advantage [1, 0, -1] / 3, plus the SD weight of the early-terminated
    # sample (its y1 is y0): 0.1 * (2/3) / 3
    _close(w.y0_x0, [(1 + 0.1 * 2 / 3) / 3, 0.0, -1 / 3])
    _close(w.y1_x1, [0.0, 1 / 9, -2 / 9])
    _close(w.y1_x0, [0.0, 0.1 * (2 / 3) / 3, 0.1 * (-1 / 3) / 3])
    _close(w.kl_y0_x0, [0.02 / 3] * 3)
    _close(w.kl_y1_x1, [0.0, 0.02 / 3, 0.02 / 3])

    # Any log-probs: the weighted rows reproduce sd_coeff * L_SD + rl_coeff * L_RL.
    g = torch.Generator().manual_seed(3)
    lp00, lp11, lp10, ref00, ref11 = (-torch.rand(3, generator=g) * 3 for _ in range(5))
    rev = revised.flatten()
    lp_sd = torch.where(rev, lp10, lp00)  # early termination: y1 := y0
    l_sd = -(adv.sd.flatten() * lp_sd).mean()
    l_rl = (
        -(adv.turn0.flatten() * lp00).mean()
        + beta * k3_terms(lp00, ref00).mean()
        - (adv.turn1.flatten() * lp11).mean()
        + beta * (k3_terms(lp11, ref11) * rev).mean()
    )
    weighted = (
        -(w.y0_x0 * lp00).sum()
        - (w.y1_x1 * lp11).sum()
        - (w.y1_x0 * lp10).sum()
        + (w.kl_y0_x0 * k3_terms(lp00, ref00)).sum()
        + (w.kl_y1_x1 * k3_terms(lp11, ref11)).sum()
    )
    assert float(weighted) == pytest.approx(float(sd_c * l_sd + rl_c * l_rl), rel=1e-6)


def test_registered():
    assert ALGORITHMS["rltf_sd"] is RLTFSDUpdate
    assert RLTFSDUpdate.name == "rltf_sd"


# ----------------------------------------------------------- on a tiny model
class CountingOracle(OracleFeedback):
    def __init__(self, task):
        super().__init__(task)
        self.feedback_calls = 0

    def feedback(self, example, completion):
        self.feedback_calls += 1
        return super().feedback(example, completion)


def _config(model_dir, *extra: str):
    return load_config(
        None,
        [
            f"model.model_name={model_dir}",
            "lora.last_n_layers=1",
            "lora.r=4",
            "gen.max_new_tokens_y0=4",
            "gen.max_new_tokens_y1=5",
            "gen.rollout_batch_size=8",
            "optim.batch_size=2",
            "optim.lr=0.01",
            "optim.lr_min=0.001",
            "fl.rounds=2",
            "rltf_sd.num_generations=3",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def parity():
    task = ParityTask(seed=42, num_train_examples=60, num_eval_examples=8)
    return task, task.load().train[:6]


@pytest.mark.slow
def test_rltf_sd_update_one_round(tiny_model_dir, parity):
    from spearfl.models.policy import Policy

    task, examples = parity
    cfg = _config(tiny_model_dir, "fl.local_train_steps=2")
    policy = Policy.from_config(cfg)
    received = policy.get_adapter()
    calls = spy_generate(policy)
    oracle = CountingOracle(task)
    torch.manual_seed(0)
    result = RLTFSDUpdate(cfg, policy, task, oracle).update(
        received, examples, RoundContext(1, 2, 0, 42)
    )

    m = result.metrics
    assert result.n_eff == float(len(examples))
    assert m["num_rollouts"] == 2 * 3 * 2  # batch_size x N x micro-steps
    turn0 = [c for c in calls if c["max_new_tokens"] == 4]
    turn1 = [c for c in calls if c["max_new_tokens"] == 5]
    assert sum(c["n"] for c in turn0) == 12
    n_right = round(m["y0_accuracy"] * 12)
    # early termination: exactly the wrong first answers are revised, each with feedback
    assert m["revisions_attempted"] == m["turn1_samples"] == 12 - n_right
    assert sum(c["n"] for c in turn1) == oracle.feedback_calls == 12 - n_right
    assert 0 < n_right < 12
    assert 0 <= m["revisions_successful"] <= m["revisions_attempted"]
    assert m["wins"] + m["losses"] == 12 + m["turn1_samples"]
    assert m["tokens_generated"] == sum(c["tokens"] for c in calls) > 0
    assert m["completions_generated"] == 12 + m["turn1_samples"]
    assert m["steps"] == 2 and math.isfinite(m["mean_loss"])
    assert any(not torch.equal(result.adapter[k], received[k]) for k in received)


@pytest.mark.slow
def test_rltf_sd_without_early_termination_revises_everything(tiny_model_dir, parity):
    from spearfl.models.policy import Policy

    task, examples = parity
    cfg = _config(tiny_model_dir, "fl.local_train_steps=1", "rltf_sd.early_termination=false")
    policy = Policy.from_config(cfg)
    oracle = CountingOracle(task)
    torch.manual_seed(1)
    result = RLTFSDUpdate(cfg, policy, task, oracle).update(
        policy.get_adapter(), examples, RoundContext(1, 2, 1, 42)
    )
    m = result.metrics
    assert m["num_rollouts"] == m["turn1_samples"] == 6
    assert oracle.feedback_calls == 6
    assert m["revisions_attempted"] == 6 - round(m["y0_accuracy"] * 6)
