"""Feedback-SFT and OPSD baselines: SFT is SPEAR without unlikelihood, OPSD's KL maths, and the
privileged text every task gives the OPSD teacher."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from spearfl.algorithms.base import RoundContext
from spearfl.algorithms.feedback_sft import FeedbackSFTUpdate
from spearfl.algorithms.losses import distill_kl
from spearfl.algorithms.opsd import OPSDMicroStep, OPSDUpdate, with_reference
from spearfl.algorithms.registry import algorithm_spec
from spearfl.algorithms.rollout import RolloutResult, Trace
from spearfl.algorithms.spear import LossWeights, SpearMicroStep, SpearUpdate
from spearfl.config import load_config
from spearfl.feedback.oracle import OracleFeedback
from spearfl.tasks.arc import ArcChallengeTask
from spearfl.tasks.base import Example
from spearfl.tasks.embedded import EmbeddedCategoryTask
from spearfl.tasks.hellaswag import HellaSwagTask
from spearfl.tasks.math_mcqa import MathMCQATask
from spearfl.tasks.strategyqa import StrategyQATask

TASK = EmbeddedCategoryTask(seed=42, num_train_examples=120, num_eval_examples=16)
ORACLE = OracleFeedback(TASK)


def test_registry_knows_both_baselines():
    assert algorithm_spec("feedback_sft").update is FeedbackSFTUpdate
    assert algorithm_spec("opsd").update is OPSDUpdate


# ------------------------------------------------------------------ OPSD's KL
def test_distill_kl_at_temperature_two_matches_hand_computation():
    teacher = torch.tensor(
        [[[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], [[1.0, -2.0, 0.0], [0.0, 0.0, 0.0]]]
    )
    student = torch.tensor(
        [[[0.0, 1.0, 1.0], [1.0, -1.0, 0.0]], [[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]]]
    )
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # the last position is padding

    def softmax(row: list[float]) -> list[float]:
        exps = [math.exp(x / 2.0) for x in row]
        return [e / sum(exps) for e in exps]

    kls = []
    for b in range(2):
        for k in range(2):
            if mask[b, k]:
                p = softmax(teacher[b, k].tolist())
                q = softmax(student[b, k].tolist())
                kls.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True)))
    expected = sum(kls) / len(kls) * 4.0
    assert expected > 0.05
    assert float(distill_kl(teacher, student, mask, 2.0)) == pytest.approx(expected, rel=1e-6)


def test_distill_kl_is_zero_for_identical_logits_and_differentiable_with_empty_mask():
    logits = torch.randn(2, 3, 5)
    assert float(distill_kl(logits, logits.clone(), torch.ones(2, 3), 2.0)) == pytest.approx(0.0)
    student = torch.randn(1, 2, 5, requires_grad=True)
    loss = distill_kl(torch.randn(1, 2, 5), student, torch.zeros(1, 2), 2.0)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.count_nonzero(student.grad) == 0


def test_teacher_prompt_prepends_reference_to_the_last_user_turn():
    messages = [
        {"role": "user", "content": "worked example"},
        {"role": "assistant", "content": "mars"},
        {"role": "user", "content": "the question"},
    ]
    out = with_reference(messages, "dog")
    assert out[:2] == messages[:2]
    assert out[2] == {"role": "user", "content": "Reference: dog\n\nthe question"}
    assert messages[2]["content"] == "the question"  # the original is untouched


# ------------------------------------------------------------- privileged text
def _check_privileged(task, examples: list[Example]) -> None:
    assert examples
    for ex in examples:
        text = task.privileged_text(ex)
        assert text.strip()
        option = ex.options[ex.gold_index]
        assert option in text


def test_privileged_text_embedded_is_the_gold_option():
    examples = TASK.load().train[:50]
    _check_privileged(TASK, examples)
    assert all(TASK.privileged_text(ex) == ex.gold for ex in examples)


def test_privileged_text_arc_names_letter_and_option(shared_data: Path):
    task = ArcChallengeTask(path=str(shared_data / "arc_challenge"))
    data = task.load()
    examples = data.train + data.eval
    _check_privileged(task, examples)
    for ex in examples:
        option = ex.options[ex.gold_index].strip()
        assert task.privileged_text(ex) == f"The correct answer is {ex.gold}: {option}"


def test_privileged_text_hellaswag(shared_data: Path):
    task = HellaSwagTask(path=str(shared_data / "hellaswag"))
    _check_privileged(task, task.load().eval)


def test_privileged_text_strategyqa_answer_first_then_facts(shared_data: Path):
    task = StrategyQATask(path=str(shared_data / "strategy_qa"))
    examples = task.load().train
    for ex in examples:
        text = task.privileged_text(ex)
        assert text.startswith(f"The answer is {ex.gold}.")
        assert all(fact in text for fact in ex.meta["facts"])
        # the answer survives the cut to distill.priv_max_chars
        assert ex.gold in text[:20]


def test_privileged_text_math_mcqa_answer_then_solution():
    task = MathMCQATask()
    ex = Example(
        "m1",
        "What is $10 - 7$?",
        ("$1$", "$2$", "$3$", "$17$"),
        "C",
        "C",
        {"solution": "Subtracting, $10 - 7 = \\boxed{3}$."},
    )
    assert task.privileged_text(ex) == (
        "The correct answer is C: $3$\nSolution: Subtracting, $10 - 7 = \\boxed{3}$."
    )
    bare = Example("m2", "q", ("a", "b", "c", "d"), "A", "A", {"solution": ""})
    assert task.privileged_text(bare) == "The correct answer is A: a"


# ------------------------------------------------ feedback-SFT == SPEAR(λ_lose=0)
def _overrides(model_dir: Path, *extra: str) -> list[str]:
    return [
        f"model.model_name={model_dir}",
        "lora.last_n_layers=1",
        "lora.r=4",
        "lora.dropout=0.0",
        "optim.batch_size=2",
        "optim.lr=0.01",
        "optim.lr_min=0.001",
        "fl.local_train_steps=2",
        "fl.local_rollout_steps=4",
        "gen.max_new_tokens_y0=4",
        "gen.max_new_tokens_y1=4",
        "gen.rollout_batch_size=4",
        "spear.unlikelihood_margin=0.0",
        *extra,
    ]


@pytest.fixture(scope="module")
def policy(tiny_model_dir: Path):
    from spearfl.models.policy import Policy

    torch.manual_seed(0)
    return Policy.from_config(load_config(None, _overrides(tiny_model_dir)))


@pytest.fixture(scope="module")
def scripted(policy) -> RolloutResult:
    """Two wins and three losses on real prompts, tokenised by the real tokenizer."""
    examples = TASK.load().train[:4]

    def trace(ex: Example, text: str, confidence: float = 1.0) -> Trace:
        prompt = tuple(policy.encode(TASK.messages(ex)))
        ids = tuple(policy.tokenizer.encode(text, add_special_tokens=False))
        return Trace(ex, prompt, ids, text, confidence)

    wins = [trace(examples[0], examples[0].gold), trace(examples[1], examples[1].gold)]
    wrong = [next(o for o in ex.options if o != ex.gold) for ex in examples]
    losses = [trace(examples[1], wrong[1], 1.0), trace(examples[2], wrong[2], 0.5)]
    losses.append(trace(examples[3], wrong[3], 0.5))
    stats = {
        "num_rollouts": 4,
        "y0_correct": 1,
        "y0_valid": 4,
        "tokens_generated": 17,
        "completions_generated": 6,
        "rollout_seconds": 0.5,
    }
    return RolloutResult(wins, losses, stats)


def _algorithms(tiny_model_dir: Path, policy):
    sft = FeedbackSFTUpdate(
        load_config(None, _overrides(tiny_model_dir, "spear.lambda_lose=0.5")),
        policy,
        TASK,
        ORACLE,
    )
    spear0 = SpearUpdate(
        load_config(None, _overrides(tiny_model_dir, "spear.lambda_lose=0")), policy, TASK, ORACLE
    )
    return sft, spear0


def test_feedback_sft_weights_drop_only_the_unlikelihood_term(tiny_model_dir, policy):
    sft, _ = _algorithms(tiny_model_dir, policy)
    assert sft.cfg.spear.lambda_lose == 0.5
    assert sft.weights() == LossWeights(win=1.0, lose=0.0, anchor=0.0, margin=0.0)


def _micro_step(alg, rollout: RolloutResult, seed: int):
    flags = [alg.loss_flags(t) for t in rollout.losses]
    reference = {n: p.detach() + 0.01 for n, p in alg.policy.trainable().items()}
    step = SpearMicroStep(
        alg.policy,
        alg.weights(),
        alg.cfg.optim,
        rollout.wins,
        rollout.losses,
        flags,
        reference,
        random.Random(seed),
    )
    model = alg.policy.model
    model.zero_grad(set_to_none=True)
    value = step(1.0)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return value, {"win": step.win_parts, "lose": step.lose_parts}, grads


def test_feedback_sft_micro_step_equals_spear_without_unlikelihood(
    tiny_model_dir, policy, scripted
):
    sft, spear0 = _algorithms(tiny_model_dir, policy)
    for seed in (0, 1):
        v_sft, p_sft, g_sft = _micro_step(sft, scripted, seed)
        v_spear, p_spear, g_spear = _micro_step(spear0, scripted, seed)
        assert v_sft == v_spear and v_sft > 0
        assert p_sft == p_spear and p_sft["lose"] == [0.0]
        assert g_sft.keys() == g_spear.keys() and g_sft
        for name, grad in g_sft.items():
            assert torch.equal(grad, g_spear[name]), name
    # SPEAR with its unlikelihood weight on does take a loss term on the same traces
    spear = SpearUpdate(
        load_config(None, _overrides(tiny_model_dir, "spear.lambda_lose=0.5")),
        policy,
        TASK,
        ORACLE,
    )
    assert _micro_step(spear, scripted, 0)[1]["lose"][0] > 0


def test_feedback_sft_update_equals_spear_without_unlikelihood(tiny_model_dir, policy, scripted):
    sft, spear0 = _algorithms(tiny_model_dir, policy)
    received = {k: v.clone() for k, v in policy.get_adapter().items()}
    results = []
    for alg in (sft, spear0):
        alg.rollout = lambda examples, ctx: RolloutResult(
            list(scripted.wins), list(scripted.losses), dict(scripted.stats)
        )
        results.append(alg.update(received, [], RoundContext(1, 4, 2, 42)))
    a, b = results
    assert a.n_eff == b.n_eff == 2.0
    assert a.adapter.keys() == b.adapter.keys()
    for key, tensor in a.adapter.items():
        assert torch.equal(tensor, b.adapter[key]), key
    assert any(not torch.equal(a.adapter[k], received[k]) for k in received)  # it trained
    drop = {"train_seconds"}
    assert {k: v for k, v in a.metrics.items() if k not in drop} == {
        k: v for k, v in b.metrics.items() if k not in drop
    }
    assert a.metrics["losses"] == 3 and a.metrics["mean_lose_loss"] == 0.0


# ----------------------------------------------------------------- OPSD update
def _plain_completion_logits(model, prompt, completion) -> torch.Tensor:
    """Logits predicting each completion token, from one unpadded forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([list(prompt) + list(completion)])).logits[0]
    return logits[len(prompt) - 1 : len(prompt) + len(completion) - 1]


@pytest.fixture(scope="module")
def sharp_policy(tiny_model_dir: Path):
    """The tiny model with scaled-up norms: sharper attention makes the answer depend on the
    context, sharper logits make it confident. A plain random model is so close to uniform
    that teacher and student differ by less than float32 noise."""
    from spearfl.models.policy import Policy

    torch.manual_seed(0)
    sharp = Policy.from_config(load_config(None, _overrides(tiny_model_dir)))
    with torch.no_grad():
        for name, param in sharp.model.named_parameters():
            if name.endswith("model.norm.weight"):
                param.mul_(30.0)
            elif "input_layernorm" in name:
                param.mul_(10.0)
    return sharp


def test_opsd_micro_step_is_the_kl_to_the_privileged_teacher(
    tiny_model_dir, sharp_policy, scripted
):
    policy = sharp_policy
    cfg = load_config(
        None,
        _overrides(tiny_model_dir, "optim.batch_size=3", "distill.kl_weight=0.7"),
    )
    opsd = OPSDUpdate(cfg, policy, TASK, ORACLE)
    traces = scripted.wins + scripted.losses[:1]
    teacher = [opsd.teacher_prompt(t.example) for t in traces]
    student_prompt = policy.encode(TASK.messages(traces[0].example))
    assert len(teacher[0]) > len(student_prompt)
    assert traces[0].example.gold in policy.tokenizer.decode(teacher[0])

    # With batch_size = #traces and no repeats, a micro-step uses every trace once.
    step = OPSDMicroStep(policy, cfg, traces, teacher, {}, random.Random(0))
    policy.model.zero_grad(set_to_none=True)
    value = step(1.0)
    assert any(p.grad is not None for p in policy.trainable().values())
    policy.model.zero_grad(set_to_none=True)
    policy.model.eval()

    total, count = 0.0, 0
    for t, t_prompt in zip(traces, teacher, strict=True):
        s_logits = _plain_completion_logits(policy.model, t.prompt_ids, t.completion_ids)
        t_logits = _plain_completion_logits(policy.model, t_prompt, t.completion_ids)
        n = len(t.completion_ids)
        total += float(distill_kl(t_logits[None], s_logits[None], torch.ones(1, n), 2.0)) * n
        count += n
    assert total / count > 0.01
    assert value == pytest.approx(0.7 * total / count, rel=1e-4)


def test_opsd_update_metrics_and_weight(tiny_model_dir, policy):
    cfg = load_config(None, _overrides(tiny_model_dir))
    received = {k: v.clone() for k, v in policy.get_adapter().items()}
    examples = TASK.load().train[:6]
    result = OPSDUpdate(cfg, policy, TASK, ORACLE).update(
        received, examples, RoundContext(1, 4, 0, 42)
    )
    m = result.metrics
    assert result.n_eff == 4.0 == m["num_rollouts"]  # n_eff = number of rollouts
    assert m["wins"] + m["losses"] == 4 and m["wins"] == m["y0_correct"]
    assert m["y0_accuracy"] == m["wins"] / 4
    assert 4 <= m["tokens_generated"] <= 4 * 4
    assert m["completions_generated"] == 4
    assert m["rollout_seconds"] > 0 and m["train_seconds"] > 0
    assert m["steps"] + m["skipped_steps"] == 2 and m["trained"] == 1
    assert m["mean_loss"] > 0 and m["lr"] > 0  # a KL between different prompts
    assert any(not torch.equal(result.adapter[k], received[k]) for k in received)
    policy.set_adapter(received)
