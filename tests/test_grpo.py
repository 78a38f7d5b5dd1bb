"""GRPO: the policy-gradient maths by hand, the reference swap, and one real round."""

from __future__ import annotations

import math
import random

import pytest
import torch

from helpers import ParityTask, spy_generate
from spearfl.algorithms import policy_gradient
from spearfl.algorithms.base import RoundContext
from spearfl.algorithms.grpo import GRPOUpdate, grpo_rewards
from spearfl.algorithms.policy_gradient import (
    RoundState,
    clipped_terms,
    group_advantages,
    k3_terms,
    reference_sequence_logprobs,
    sampling_settings,
    sequence_logprob,
    sequence_logprobs,
)
from spearfl.algorithms.registry import algorithm_spec
from spearfl.algorithms.rollout import CountingGenerator
from spearfl.config import GenConfig, load_config
from spearfl.feedback.oracle import OracleFeedback


# ---------------------------------------------------------------- advantages
def test_group_advantages_normalised_by_population_std():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), normalize=True)
    assert adv.tolist() == [[1.0, -1.0, -1.0, 1.0]]  # mean 0.5, std 0.5
    # mean 1/4, std sqrt(1/4 * 3/4) = sqrt(3)/4
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), normalize=True)
    s3 = math.sqrt(3.0)
    assert adv[0].tolist() == pytest.approx([s3, -1 / s3, -1 / s3, -1 / s3], rel=1e-6)


def test_group_advantages_all_equal_group_is_zero_not_nan():
    adv = group_advantages(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]), normalize=True)
    assert adv.tolist() == [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


def test_group_advantages_without_normalisation_and_per_group():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 2.0, 0.0, 0.0]])
    adv = group_advantages(rewards, normalize=False)
    assert adv.tolist() == [[0.75, -0.25, -0.25, -0.25], [1.0, 1.0, -1.0, -1.0]]
    # the second group has std 1: normalising leaves it unchanged
    assert group_advantages(rewards, normalize=True)[1].tolist() == [1.0, 1.0, -1.0, -1.0]


def test_grpo_rewards_scale_then_clip():
    assert grpo_rewards([True, False], 3.0, None).tolist() == [3.0, 0.0]
    assert grpo_rewards([True, False, True], 2.0, 1.5).tolist() == [1.5, 0.0, 1.5]


# ---------------------------------------------------------- sequence log-probs
def test_sequence_logprob_is_the_mean_over_masked_tokens():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [0.0, -4.0, -6.0], [-9.0, -9.0, -9.0]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1], [0, 0, 0]])
    assert sequence_logprob(logp, mask).tolist() == [-1.5, -5.0, 0.0]


# ------------------------------------------------------------ clipped objective
def test_clipped_terms_both_signs_by_hand():
    up, down = math.log(1.5), math.log(0.5)
    logp_new = torch.tensor([up, down, down, up], requires_grad=True)
    logp_old = torch.zeros(4)
    adv = torch.tensor([2.0, -1.0, 2.0, -1.0])
    terms = clipped_terms(logp_new, logp_old, adv, clip=0.2)
    # A>0, ratio 1.5 > 1.2: clipped, -1.2*2 = -2.4.   A<0, ratio 0.5 < 0.8: clipped, 0.8.
    # A>0, ratio 0.5: unclipped, -0.5*2 = -1.0.       A<0, ratio 1.5: unclipped, 1.5.
    assert terms.detach().tolist() == pytest.approx([-2.4, 0.8, -1.0, 1.5])
    terms.sum().backward()
    # clipped terms pass no gradient; unclipped ones d(-ρA)/dlogp = -ρA
    assert logp_new.grad.tolist() == pytest.approx([0.0, 0.0, -0.5 * 2, 1.5])


def test_clipped_terms_on_policy_are_minus_the_advantages():
    logp = torch.tensor([-0.3, -2.0, -1.0])
    adv = torch.tensor([1.0, -0.5, 2.0])
    assert clipped_terms(logp, logp, adv, 0.2).tolist() == pytest.approx([-1.0, 0.5, -2.0])


# ----------------------------------------------------------------------- k3 KL
def test_k3_terms_by_hand():
    zero = torch.zeros(1)
    assert k3_terms(zero, zero).tolist() == [0.0]
    ln2 = math.log(2.0)
    # d = logp_ref - logp_new; d clamped to +5 in the last row
    got = k3_terms(torch.tensor([0.0, ln2, 0.0]), torch.tensor([ln2, 0.0, 10.0]))
    assert got.tolist() == pytest.approx([1 - ln2, ln2 - 0.5, math.exp(5) - 6], rel=1e-6)


def test_k3_terms_gradient_vanishes_at_the_reference():
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    k3_terms(logp, logp.detach().clone()).sum().backward()
    assert logp.grad.tolist() == [0.0, 0.0]


def test_sampling_settings_force_diverse_samples():
    low = sampling_settings(GenConfig(temperature=0.3, do_sample=False))
    assert (low.temperature, low.do_sample) == (0.7, True)
    assert sampling_settings(GenConfig(temperature=0.9)).temperature == 0.9


def test_registered():
    assert algorithm_spec("grpo").update is GRPOUpdate
    assert GRPOUpdate.name == "grpo"


# ----------------------------------------------------------- on a tiny model
def _config(model_dir, *extra: str):
    return load_config(
        None,
        [
            f"model.model_name={model_dir}",
            "lora.last_n_layers=1",
            "lora.r=4",
            "gen.max_new_tokens_y0=4",
            "gen.max_new_tokens_y1=5",
            "gen.temperature=0.3",
            "gen.do_sample=false",
            "gen.rollout_batch_size=8",
            "optim.batch_size=2",
            "optim.lr=0.01",
            "optim.lr_min=0.001",
            "fl.rounds=2",
            "fl.local_train_steps=2",
            "optim.grad_accum_steps=2",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def parity():
    task = ParityTask(seed=42, num_train_examples=60, num_eval_examples=8)
    return task, task.load().train[:6]


def _whole_model_sequence_logprobs(model, rows) -> list[float]:
    """Mean completion log-probability of each row from a plain pass of its unpadded tokens."""
    out = []
    with torch.no_grad():
        for prompt, completion in rows:
            logits = model(input_ids=torch.tensor([[*prompt, *completion]])).logits[0]
            logp = torch.log_softmax(logits.float(), -1)
            picked = [logp[len(prompt) + j - 1, t] for j, t in enumerate(completion)]
            out.append(float(sum(picked) / len(picked)))
    return out


@pytest.mark.slow
def test_reference_logprobs_restore_the_adapter_and_keep_the_frozen_states(tiny_model_dir):
    from spearfl.models.policy import Policy
    from spearfl.models.trunk import frozen_memo

    policy = Policy.from_config(_config(tiny_model_dir))
    reference = policy.get_adapter()
    gen = torch.Generator().manual_seed(0)
    current = {k: v + 0.5 * torch.randn(v.shape, generator=gen) for k, v in reference.items()}
    policy.set_adapter(current)
    policy.model.train()
    rows = [((5, 6, 7), (8, 9)), ((5, 6, 11), (12, 13, 14))]
    memo = frozen_memo(policy.model)
    mine = sequence_logprobs(policy, rows, micro=1)
    assert memo.computed_rows == 2

    ref = reference_sequence_logprobs(policy, reference, rows, micro=1)

    # An adapter never changes the frozen layers: the swap ran none of them again.
    assert memo.computed_rows == 2
    after = policy.get_adapter()
    assert all(torch.equal(after[k], current[k]) for k in current)
    assert policy.model.training  # mode restored too
    assert not ref.requires_grad
    policy.model.eval()
    assert mine.tolist() == pytest.approx(_whole_model_sequence_logprobs(policy.model, rows),
                                          abs=1e-5)  # fmt: skip
    policy.set_adapter(reference)
    expected = _whole_model_sequence_logprobs(policy.model, rows)
    assert ref.tolist() == pytest.approx(expected, abs=1e-5)
    assert mine.tolist() != pytest.approx(expected, abs=1e-3)  # the swap mattered


@pytest.mark.slow
def test_grpo_update_one_round(tiny_model_dir, parity):
    from spearfl.models.policy import Policy

    task, examples = parity
    cfg = _config(tiny_model_dir, "grpo.num_generations=4")
    policy = Policy.from_config(cfg)
    received = policy.get_adapter()
    calls = spy_generate(policy)
    torch.manual_seed(0)
    result = GRPOUpdate(cfg, policy, task, OracleFeedback(task)).update(
        received, examples, RoundContext(1, 2, 0, 42)
    )

    m = result.metrics
    micro_steps = cfg.fl.local_train_steps * cfg.optim.grad_accum_steps
    assert m["num_rollouts"] == cfg.optim.batch_size * 4 * micro_steps == 32
    assert result.n_eff == float(len(examples))
    # one generation call per micro-step, sampling at temperature >= 0.7
    assert len(calls) == micro_steps
    assert all(c["n"] == 8 and c["do_sample"] and c["temperature"] == 0.7 for c in calls)
    assert all(c["max_new_tokens"] == 4 for c in calls)
    assert m["tokens_generated"] == sum(c["tokens"] for c in calls) > 0
    assert m["completions_generated"] == m["num_rollouts"] == 32
    assert m["wins"] + m["losses"] == m["num_rollouts"]
    assert m["y0_accuracy"] == pytest.approx(m["wins"] / 32)
    assert m["y0_correct"] == m["wins"]  # every right sample is a win
    assert m["mean_reward"] == pytest.approx(m["y0_accuracy"])  # reward_scale 1
    assert 0 < m["wins"] < 32
    assert m["steps"] == 2 and m["skipped_steps"] == 0
    assert math.isfinite(m["mean_loss"])
    assert m["rollout_seconds"] > 0 and m["train_seconds"] > 0
    assert m["lr"] == pytest.approx(0.01)
    assert result.adapter.keys() == received.keys()
    assert any(not torch.equal(result.adapter[k], received[k]) for k in received)
    assert not policy.model.training


def _one_step_state(cfg, policy, task, examples, reference, micro_index: int) -> RoundState:
    """A round state for one micro-step; ``micro_index`` 1 is past the first optimiser step,
    so the reference swap runs."""
    return RoundState(
        examples=examples,
        reference=reference,
        generator=CountingGenerator(policy, sampling_settings(cfg.gen), task),
        rng=random.Random(0),
        accum=1,
        micro_index=micro_index,
    )


@pytest.mark.slow
def test_grpo_micro_batches_give_the_same_gradient(tiny_model_dir, parity):
    """``optim.micro_batch_size`` splits the forward pass without changing the loss."""
    from spearfl.models.policy import Policy

    task, examples = parity
    grads = []
    losses = []
    for micro in ([], ["optim.micro_batch_size=3"]):
        cfg = _config(tiny_model_dir, "lora.dropout=0.0", "grpo.num_generations=4", *micro)
        policy = Policy.from_config(cfg)
        reference = policy.get_adapter()
        # a non-zero B so every LoRA tensor gets a gradient
        policy.set_adapter({k: v + 0.1 for k, v in reference.items()})
        algo = GRPOUpdate(cfg, policy, task, OracleFeedback(task))
        state = _one_step_state(cfg, policy, task, examples, reference, micro_index=1)
        torch.manual_seed(0)
        losses.append(algo.micro_step(state, 1.0))
        grads.append({n: p.grad.clone() for n, p in policy.trainable().items()})
    # Group advantages sum to zero, so the loss (6e-5 here, the KL term) is what is left of a
    # cancellation: float32 rounding of the per-pass log-probs, ~1e-8, is its floor.
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-7)
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name


@pytest.mark.slow
@pytest.mark.parametrize("at_reference", [True, False])
def test_without_dropout_the_step_scores_its_samples_once(
    tiny_model_dir, parity, monkeypatch, at_reference
):
    """No dropout: the pre-step log-probs are the step's own, detached; the loss and the
    gradients are those of the separate eval-mode pass it replaces, with one pass fewer."""
    from spearfl.models.policy import Policy

    task, examples = parity
    runs = []
    for separate_pass in (True, False):
        cfg = _config(tiny_model_dir, "lora.dropout=0.0", "grpo.num_generations=4",
                      "grpo.beta_kl=0.5")  # fmt: skip
        policy = Policy.from_config(cfg)
        assert policy.dropout_free
        if separate_pass:  # what a model with dropout runs
            monkeypatch.setattr(Policy, "dropout_free", property(lambda self: False))
        reference = policy.get_adapter()
        policy.set_adapter({k: v + 0.1 for k, v in reference.items()})
        passes = []
        scoring = policy_gradient.completion_logprobs

        def counted(model, batch, passes=passes, scoring=scoring):
            passes.append(len(batch.targets))
            return scoring(model, batch)

        monkeypatch.setattr(policy_gradient, "completion_logprobs", counted)
        state = _one_step_state(
            cfg, policy, task, examples, reference, micro_index=0 if at_reference else 1
        )
        torch.manual_seed(0)
        loss = GRPOUpdate(cfg, policy, task, OracleFeedback(task)).micro_step(state, 1.0)
        grads = {n: p.grad.clone() for n, p in policy.trainable().items()}
        runs.append((loss, grads, len(passes)))
        monkeypatch.undo()
        assert passes == [8] * len(passes)  # 2 prompts x 4 samples, one pass each time
    (loss_a, grads_a, passes_a), (loss_b, grads_b, passes_b) = runs
    # pre-step, reference (past the first step) and training passes, against one fewer
    assert (passes_a, passes_b) == ((2, 1) if at_reference else (3, 2))
    assert loss_b == pytest.approx(loss_a, rel=1e-5, abs=1e-7)
    for name, grad in grads_a.items():
        assert torch.allclose(grads_b[name], grad, atol=1e-6), name
