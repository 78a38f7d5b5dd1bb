"""RLTF-SD as the paper defines it: one rollout per round, traces, weights and loss by hand."""

from __future__ import annotations

import random

import pytest
import torch

from helpers import ParityTask, spy_generate
from spearfl.algorithms import rltf_sd
from spearfl.algorithms.base import RoundContext
from spearfl.algorithms.policy_gradient import RoundState, k3_terms, sampling_settings
from spearfl.algorithms.registry import algorithm_spec
from spearfl.algorithms.rltf_sd import (
    RLTFRollout,
    RLTFSDUpdate,
    build_traces,
    merge_rows,
    rltf_advantages,
    rollout_prompt_count,
)
from spearfl.algorithms.rollout import CountingGenerator
from spearfl.config import ConfigError, config_from_dict, load_config
from spearfl.feedback.oracle import OracleFeedback

T, F = True, False


def _close(tensor: torch.Tensor, expected: list) -> None:
    assert torch.allclose(tensor, torch.tensor(expected), atol=1e-6), (tensor, expected)


def _approx(value: float):
    return pytest.approx(value, abs=1e-6)


# ------------------------------------------------------------ rollout size
def test_rollout_prompt_count():
    assert rollout_prompt_count(10, 4, 100) == 2  # floor(10 / 4)
    assert rollout_prompt_count(10, 2, 100) == 5
    assert rollout_prompt_count(10, 2, 3) == 3  # at most the client's examples
    assert rollout_prompt_count(3, 4, 100) == 1  # at least one prompt
    assert rollout_prompt_count(80, 4, 450) == 20  # the paper's 80 rollout steps, N = 4


# ------------------------------------------------------------ advantages
def test_advantages_with_early_termination():
    # Group 1: r0 = [1, 0, 0]; the two wrong ones are revised, r1 = [1, 0]. Group 2: r0 =
    # [0, 0, 1]; both wrong ones fixed. The r1 entries of early-terminated samples (9) are
    # ignored: r1 = r0 there.
    adv = rltf_advantages(
        torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
        torch.tensor([[9.0, 1.0, 0.0], [1.0, 1.0, 9.0]]),
        torch.tensor([[F, T, T], [T, T, F]]),
        gamma=1.0,
    )
    _close(adv.r1, [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    _close(adv.returns, [[2.0, 1.0, 0.0], [1.0, 1.0, 2.0]])
    _close(adv.b0, [[1 / 3], [1 / 3]])
    _close(adv.b_return, [[1.0], [4 / 3]])
    _close(adv.b1, [[2 / 3], [1.0]])
    _close(adv.sd, [[2 / 3, 2 / 3, -1 / 3], [2 / 3, 2 / 3, 2 / 3]])  # r1 - b0
    _close(adv.turn0, [[1.0, 0.0, -1.0], [-1 / 3, -1 / 3, 2 / 3]])  # R - bR
    # r1 - b1 for every sample, early-terminated ones included (their turn 1 is y0 on x0)
    _close(adv.turn1, [[1 / 3, 1 / 3, -2 / 3], [0.0, 0.0, 0.0]])


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


# ------------------------------------------------------------ traces and their rows
def _first(i: int):
    return ((100 + i, 101), (200 + i,))  # (x0, y0) of sample i


def _revision(i: int):
    return ((300 + i, 301, 302), (400 + i, 401))  # (x1, y1): other tokens than (x0, y0)


def _hand_traces(sd_coeff=0.1, rl_coeff=0.5, beta_kl=0.05):
    """P = 2 prompts x N = 3 samples, the reward table of test_advantages_with_early_termination."""
    return build_traces(
        [_first(i) for i in range(6)],
        {i: _revision(i) for i in (1, 2, 3, 4)},  # samples 0 and 5 were right at turn 0
        torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
        torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]),
        gamma=1.0,
        sd_coeff=sd_coeff,
        rl_coeff=rl_coeff,
        beta_kl=beta_kl,
    )


def _weights(trace) -> dict:
    return {w.row: (w.coef, w.kl) for w in trace.rows}


def test_each_row_of_a_trace_carries_its_own_coefficient():
    traces = _hand_traces()  # sd_coeff 0.1, rl_coeff 0.5, beta_kl 0.05: KL weight 0.025
    assert [t.group for t in traces] == [0, 0, 0, 1, 1, 1]
    assert [t.revision is None for t in traces] == [T, F, F, F, F, T]

    # Sample 1, revised and fixed: sd = 2/3, turn0 = 0, turn1 = 1/3.
    x0, y0 = _first(1)
    x1, y1 = _revision(1)
    w = _weights(traces[1])
    assert set(w) == {(x0, y0), (x1, y1), (x0, y1)}
    assert w[(x0, y0)] == (_approx(0.5 * 0.0), _approx(0.025))  # rl * (R - bR), KL
    assert w[(x1, y1)] == (_approx(0.5 * 1 / 3), _approx(0.025))  # rl * (r1 - b1), KL
    assert w[(x0, y1)] == (_approx(0.1 * 2 / 3), 0.0)  # sd * (r1 - b0), no KL

    # Sample 2, revised and still wrong: sd = -1/3, turn0 = -1, turn1 = -2/3.
    x0, y0 = _first(2)
    x1, y1 = _revision(2)
    w = _weights(traces[2])
    assert w[(x0, y0)] == (_approx(-0.5), _approx(0.025))
    assert w[(x1, y1)] == (_approx(-1 / 3), _approx(0.025))
    assert w[(x0, y1)] == (_approx(-1 / 30), 0.0)

    # Sample 3 (group 2), fixed: turn1 = r1 - b1 = 0 (everyone ends right), sd = 2/3.
    x0, y0 = _first(3)
    x1, y1 = _revision(3)
    w = _weights(traces[3])
    assert w[(x0, y0)] == (_approx(0.5 * -1 / 3), _approx(0.025))
    assert w[(x1, y1)] == (0.0, _approx(0.025))
    assert w[(x0, y1)] == (_approx(0.1 * 2 / 3), 0.0)


def test_an_early_terminated_trace_keeps_all_three_terms_on_its_first_answer():
    traces = _hand_traces()
    # Sample 0: right at once, x1 = x0, y1 = y0, r1 = r0 = 1. sd = 2/3, turn0 = 1, turn1 = 1/3:
    # one row with 0.1 * 2/3 + 0.5 * (1 + 1/3) and the KL of both RL terms.
    t = traces[0]
    assert (t.r0, t.r1, t.episode_return) == (1.0, 1.0, 2.0)
    assert (t.sd, t.turn0, t.turn1) == (_approx(2 / 3), _approx(1.0), _approx(1 / 3))
    assert _weights(t) == {_first(0): (_approx(0.1 * 2 / 3 + 0.5 * 4 / 3), _approx(0.05))}
    # Sample 5 (group 2): sd = 2/3, turn0 = 2/3, turn1 = 0.
    assert _weights(traces[5]) == {_first(5): (_approx(0.1 * 2 / 3 + 0.5 * 2 / 3), _approx(0.05))}


def test_without_early_termination_every_trace_scores_three_rows():
    traces = build_traces(
        [_first(i) for i in range(4)],
        {i: _revision(i) for i in range(4)},
        torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
        torch.tensor([[0.0, 1.0, 1.0, 0.0]]),
        gamma=1.0,
        sd_coeff=0.1,
        rl_coeff=1.0,
        beta_kl=0.02,
    )
    # test_advantages_without_early_termination's numbers: sd [-1/4, 3/4, 3/4, -1/4],
    # turn0 [1/4, 1/4, 1/4, -3/4], turn1 [-1/2, 1/2, 1/2, -1/2].
    x0, y0 = _first(0)
    x1, y1 = _revision(0)
    assert _weights(traces[0]) == {
        (x0, y0): (_approx(0.25), _approx(0.02)),
        (x1, y1): (_approx(-0.5), _approx(0.02)),
        (x0, y1): (_approx(-0.025), 0.0),
    }
    assert all(len(t.rows) == 3 for t in traces)


def test_merged_rows_reproduce_the_loss_definition():
    traces = _hand_traces(sd_coeff=0.1, rl_coeff=1.0, beta_kl=0.02)
    rows = merge_rows(traces)
    # 2 early-terminated traces x 1 row + 4 revised traces x 3 rows, all distinct sequences
    assert len(rows) == 2 + 4 * 3
    g = torch.Generator().manual_seed(3)
    logp = {w.row: -3 * float(torch.rand(1, generator=g)) for w in rows}
    ref = {w.row: -3 * float(torch.rand(1, generator=g)) for w in rows}

    def k3(row) -> float:
        return float(k3_terms(torch.tensor(logp[row]), torch.tensor(ref[row])))

    weighted = sum(-w.coef * logp[w.row] + w.kl * k3(w.row) for w in rows)
    # The definition, trace by trace, with x1 = x0 and y1 = y0 where turn 1 was skipped.
    l_sd = l_rl = 0.0
    for t in traces:
        first = t.first
        turn1 = t.revision or first
        distilled = (first[0], turn1[1])
        l_sd += -t.sd * logp[distilled] / 6
        l_rl += (-t.turn0 * logp[first] + 0.02 * k3(first)) / 6
        l_rl += (-t.turn1 * logp[turn1] + 0.02 * k3(turn1)) / 6
    assert weighted == pytest.approx(0.1 * l_sd + 1.0 * l_rl, rel=1e-9)


def test_merge_rows_scores_a_repeated_sequence_once_and_averages_over_traces():
    traces = _hand_traces(sd_coeff=0.1, rl_coeff=1.0, beta_kl=0.02)
    # trace 0 drawn twice (with replacement) and trace 1: the mean is over 3 traces
    rows = {w.row: (w.coef, w.kl) for w in merge_rows([traces[0], traces[0], traces[1]])}
    assert len(rows) == 1 + 3
    coef0 = 0.1 * 2 / 3 + 1.0 * 4 / 3
    assert rows[_first(0)] == (_approx(2 * coef0 / 3), _approx(2 * 0.04 / 3))
    x0, y0 = _first(1)
    assert rows[(x0, y0)] == (0.0, _approx(0.02 / 3))  # no advantage, still its KL
    assert rows[_revision(1)] == (_approx(1 / 3 / 3), _approx(0.02 / 3))
    # a row with neither weight is not scored
    zero = build_traces(
        [_first(0), _first(1)],
        {},
        torch.tensor([[1.0, 1.0]]),
        torch.tensor([[1.0, 1.0]]),
        gamma=1.0,
        sd_coeff=0.1,
        rl_coeff=1.0,
        beta_kl=0.0,
    )
    assert merge_rows(zero) == []


def test_registered():
    assert algorithm_spec("rltf_sd").update is RLTFSDUpdate
    assert RLTFSDUpdate.name == "rltf_sd"


# ------------------------------------------------------------ settings
def test_removed_keys_point_to_the_grpo_section(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["rltf_sd.num_generations=2"])
    assert "grpo.num_generations" in str(info.value)
    assert "paper's RLTF-SD" in str(info.value)
    assert "--set rltf_sd.num_generations=2" in str(info.value)
    assert info.value.key == "rltf_sd.num_generations"

    path = tmp_path / "paper.yaml"
    path.write_text("algorithm:\n  name: rltf_sd\nrltf_sd:\n  beta_kl: 0.1\n")
    with pytest.raises(ConfigError, match=r"KL weight from grpo\.beta_kl") as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert info.value.key == "rltf_sd.beta_kl"


# ----------------------------------------------------------- on a tiny model
class CountingOracle(OracleFeedback):
    def __init__(self, task):
        super().__init__(task)
        self.feedback_calls = 0

    def feedback(self, example, completion):
        self.feedback_calls += 1
        return super().feedback(example, completion)


def _overrides(model_dir) -> list[str]:
    return [
        f"model.model_name={model_dir}",
        "model.gradient_checkpointing=false",
        "lora.last_n_layers=1",
        "lora.r=4",
        "lora.dropout=0.0",
        "gen.max_new_tokens_y0=4",
        "gen.max_new_tokens_y1=5",
        "gen.rollout_batch_size=8",
        "optim.batch_size=2",
        "optim.lr=0.01",
        "optim.lr_min=0.001",
        "fl.rounds=2",
        "fl.local_rollout_steps=10",
    ]


def _config(model_dir, *extra: str):
    return load_config(None, [*_overrides(model_dir), *extra])


@pytest.fixture(scope="module")
def parity():
    task = ParityTask(seed=42, num_train_examples=60, num_eval_examples=8)
    return task, task.load().train[:6]


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    from spearfl.models.policy import Policy

    return Policy.from_config(_config(tiny_model_dir))


def _rolled_out(cfg, policy, task, examples, seed=0):
    """The round state right after the rollout, as ``update`` has it before its first step."""
    algo = RLTFSDUpdate(cfg, policy, task, CountingOracle(task))
    state = RoundState(
        examples=examples,
        reference=policy.get_adapter(),
        generator=CountingGenerator(policy, sampling_settings(cfg.gen), task),
        rng=random.Random(seed),
        accum=cfg.optim.grad_accum_steps,
    )
    torch.manual_seed(seed)
    algo.begin_round(state)
    return algo, state


@pytest.mark.slow
def test_one_rollout_per_round_however_many_micro_steps(tiny_model_dir, parity, policy):
    task, examples = parity
    # 10 rollout steps / N = 4 -> 2 prompts x 4 samples; 3 steps x 2 accumulation micro-steps
    cfg = _config(
        tiny_model_dir,
        "grpo.num_generations=4",
        "fl.local_train_steps=3",
        "optim.grad_accum_steps=2",
    )
    received = policy.get_adapter()
    calls = spy_generate(policy)
    oracle = CountingOracle(task)
    torch.manual_seed(0)
    try:
        result = RLTFSDUpdate(cfg, policy, task, oracle).update(
            received, examples, RoundContext(1, 2, 0, 42)
        )
    finally:
        del policy.generate  # the spy was set on the instance
        policy.set_adapter(received)

    m = result.metrics
    assert m["rollout_prompts"] == 2 and m["num_rollouts"] == 8
    assert result.n_eff == 8.0  # the number of traces
    turn0 = [c for c in calls if c["max_new_tokens"] == 4]
    turn1 = [c for c in calls if c["max_new_tokens"] == 5]
    assert [c["n"] for c in turn0] == [8]  # one turn-0 generation for the whole round
    n_right = int(m["y0_correct"])
    assert 0 < n_right < 8 and m["y0_accuracy"] == n_right / 8
    # early termination: exactly the wrong first answers are revised, once, with feedback
    assert [c["n"] for c in turn1] == [8 - n_right]
    assert m["revisions_attempted"] == m["turn1_samples"] == oracle.feedback_calls == 8 - n_right
    assert m["wins"] + m["losses"] == 8 + m["turn1_samples"]
    assert m["tokens_generated"] == sum(c["tokens"] for c in calls)
    assert m["completions_generated"] == 8 + 8 - n_right
    assert m["steps"] == 3
    assert any(not torch.equal(result.adapter[k], received[k]) for k in received)


@pytest.mark.slow
def test_the_paper_files_group_size_and_kl_weight_come_from_the_grpo_section(
    tiny_model_dir, parity, policy
):
    # What the paper's RLTF-SD StrategyQA file says (N = 2, KL weight 0.1), as a config dict.
    task, examples = parity
    data = {
        "algorithm": {"name": "rltf_sd"},
        "grpo": {"num_generations": 2, "beta_kl": 0.1},
        "rltf_sd": {"gamma": 1.0, "sd_coeff": 0.1, "rl_coeff": 1.0, "early_termination": True},
    }
    base = _config(tiny_model_dir).to_dict()
    for section, values in data.items():
        base[section].update(values)
    cfg = config_from_dict(base)
    _, state = _rolled_out(cfg, policy, task, examples)
    traces = state.rollout.traces
    # 10 rollout steps / N = 2 -> 5 prompts x 2 samples, 5 distinct prompts
    assert len(traces) == 10 and [t.group for t in traces] == [g for g in range(5) for _ in "ab"]
    assert len({t.first[0] for t in traces}) == 5
    assert all(traces[2 * g].first[0] == traces[2 * g + 1].first[0] for g in range(5))
    # every RL row carries rl_coeff x 0.1 (0.2 on an early-terminated trace's single row)
    for t in traces:
        kl = [w.kl for w in t.rows]
        assert kl == ([pytest.approx(0.2)] if t.revision is None else [0.1, 0.1, 0.0])
    # the reference log-probs were taken for exactly the KL rows, before any step
    assert set(state.rollout.reference) == {w.row for t in traces for w in t.rows if w.kl}


@pytest.mark.slow
def test_fewer_examples_than_prompts_and_no_early_termination(tiny_model_dir, parity, policy):
    task, examples = parity
    cfg = _config(tiny_model_dir, "grpo.num_generations=2", "rltf_sd.early_termination=false")
    algo, state = _rolled_out(cfg, policy, task, examples[:3])
    traces = state.rollout.traces
    # floor(10 / 2) = 5 prompts wanted, 3 examples: each drawn once, twice sampled
    assert len(traces) == 6 and len({t.first[0] for t in traces}) == 3
    assert algo.n_eff(state) == 6.0
    # without early termination every sample gets feedback and a turn 1
    assert algo.provider.feedback_calls == 6
    assert all(t.revision is not None and len(t.rows) == 3 for t in traces)
    assert state.counts["turn1_samples"] == 6


def _hand_rollout(count: int) -> RLTFRollout:
    traces = build_traces(
        [_first(i) for i in range(count)],
        {},
        torch.tensor([[1.0] + [0.0] * (count - 1)]),
        torch.tensor([[1.0] + [0.0] * (count - 1)]),
        gamma=1.0,
        sd_coeff=0.1,
        rl_coeff=1.0,
        beta_kl=0.02,
    )
    return RLTFRollout(traces, {t.first: -2.0 for t in traces})


@pytest.mark.slow
def test_micro_steps_draw_batch_size_traces(tiny_model_dir, parity, policy, monkeypatch):
    task, examples = parity
    drawn: list[list[int]] = []
    real_merge = rltf_sd.merge_rows

    def spy(traces):
        drawn.append([t.first[1][0] for t in traces])
        return real_merge(traces)

    monkeypatch.setattr(rltf_sd, "merge_rows", spy)

    def draws(batch_size: int, count: int, seed: int) -> list[list[int]]:
        drawn.clear()
        cfg = _config(tiny_model_dir, f"optim.batch_size={batch_size}")
        algo = RLTFSDUpdate(cfg, policy, task, OracleFeedback(task))
        state = RoundState(
            examples, {}, CountingGenerator(policy, cfg.gen, task), random.Random(seed), 1
        )
        state.rollout = _hand_rollout(count)
        for _ in range(3):
            algo.micro_step(state, 1.0)
        assert algo.n_eff(state) == count
        return list(drawn)

    enough = draws(3, 5, seed=1)
    assert [len(d) for d in enough] == [3, 3, 3]
    assert all(len(set(d)) == 3 for d in enough)  # without replacement
    assert draws(3, 5, seed=1) == enough  # seeded: the same draws again
    assert draws(3, 5, seed=2) != enough
    short = draws(7, 5, seed=1)
    assert [len(d) for d in short] == [7, 7, 7]  # with replacement: 7 from 5 repeats some
    assert all(set(d) <= {200 + i for i in range(5)} for d in short)


def _mean_logprob(model, row) -> torch.Tensor:
    """Mean token log-prob of a completion after its prompt, from one plain forward pass."""
    prompt, completion = row
    ids = torch.tensor([[*prompt, *completion]])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    token_logp = torch.log_softmax(logits.float(), -1).gather(
        -1, torch.tensor(completion).unsqueeze(-1)
    )
    return token_logp.mean()


@pytest.mark.slow
def test_micro_step_loss_and_gradient_equal_the_definition(tiny_model_dir, parity, policy):
    task, examples = parity
    # 2 prompts x 3 samples; the micro-batch draws all 6 traces (a mean over all of them)
    cfg = _config(
        tiny_model_dir,
        "grpo.num_generations=3",
        "fl.local_rollout_steps=6",
        "optim.batch_size=6",
        "grpo.beta_kl=0.3",
        "rltf_sd.sd_coeff=0.7",
        "rltf_sd.rl_coeff=0.9",
        "rltf_sd.gamma=0.5",
        # One row per forward pass, as in the hand computation: batching the rows with their
        # shared prompt prefix moves the attention gradients by ~1e-4 (relative), a scoring
        # matter this test is not about.
        "optim.micro_batch_size=1",
    )
    received = policy.get_adapter()
    algo, state = _rolled_out(cfg, policy, task, examples, seed=5)
    traces = state.rollout.traces
    assert len(traces) == 6
    kinds = {t.revision is None for t in traces}
    assert kinds == {True, False}, "both early-terminated and revised traces"
    assert any(t.sd != t.turn1 for t in traces if t.revision is not None)

    # Move away from the reference so the KL terms are not zero.
    g = torch.Generator().manual_seed(0)
    moved = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in received.items()}
    policy.set_adapter(moved)
    params = list(policy.trainable().values())
    for p in params:
        p.grad = None
    loss = algo.micro_step(state, 1.0)
    grads = [p.grad.clone() for p in params]

    def definition() -> torch.Tensor:
        total = torch.zeros(())
        for t in traces:
            first = t.first
            turn1 = t.revision or first
            distilled = (first[0], turn1[1])
            lp0, lp1 = _mean_logprob(policy.model, first), _mean_logprob(policy.model, turn1)
            l_sd = -t.sd * _mean_logprob(policy.model, distilled)
            l_rl = -t.turn0 * lp0 + 0.3 * k3_terms(lp0, ref[first])
            l_rl = l_rl - t.turn1 * lp1 + 0.3 * k3_terms(lp1, ref[turn1])
            total = total + (0.7 * l_sd + 0.9 * l_rl) / 6
        return total

    with torch.no_grad():
        policy.set_adapter(received)
        rows = {t.first for t in traces} | {t.revision for t in traces if t.revision}
        ref = {row: _mean_logprob(policy.model, row) for row in rows}
        policy.set_adapter(moved)
    for p in params:
        p.grad = None
    policy.model.train()
    expected = definition()
    expected.backward()
    policy.model.eval()
    want = [p.grad.clone() for p in params]
    policy.set_adapter(received)

    assert abs(float(expected.detach())) > 1e-3
    assert loss == pytest.approx(float(expected.detach()), rel=1e-5)
    for got, hand in zip(grads, want, strict=True):
        # float32 rounding of batched against one-row passes: ~1e-5 of the tensor's scale
        scale = float(hand.abs().max())
        assert torch.allclose(got, hand, rtol=1e-4, atol=2e-5 * scale)
    assert any(float(w.abs().max()) > 0 for w in grads)
