"""The device's feedback inbox and the ``human`` provider: stored verdicts become SPEAR's wins and
losses with the right confidences, and a device with nothing new does not move the average."""

from __future__ import annotations

import pytest
import torch

from spearfl.algorithms.base import RoundContext
from spearfl.algorithms.rollout import CONFIDENCE_FIXED, CONFIDENCE_UNFIXED
from spearfl.algorithms.spear import SpearUpdate
from spearfl.config import ConfigError, load_config
from spearfl.feedback.human import HumanFeedback, human_rollout
from spearfl.feedback.store import FeedbackStore, StoreError, UnknownInteraction
from spearfl.tasks.embedded import EmbeddedCategoryTask


def _messages(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def _ask(store: FeedbackStore, n: int, answer: str = "a cat") -> int:
    item, created = store.add_answer(
        request_id=f"req-{n}",
        prompt=f"question {n}?",
        messages=_messages(f"question {n}?"),
        answer=answer,
        adapter_round=0,
    )
    assert created
    return item.id


def test_store_validates_and_never_duplicates_a_request(tmp_path):
    store = FeedbackStore(tmp_path / "inbox.sqlite")
    first = _ask(store, 1)
    again, created = store.add_answer(
        request_id="req-1", prompt="something else", messages=[], answer="x", adapter_round=3
    )
    assert not created and again.id == first and again.prompt == "question 1?"
    assert store.count() == 1

    with pytest.raises(StoreError, match="needs a hint"):
        store.set_verdict(first, "wrong", "   ")
    with pytest.raises(StoreError, match="longer than 1000"):
        store.set_verdict(first, "wrong", "x" * 1_000_000)
    with pytest.raises(StoreError, match="'right' or 'wrong'"):
        store.set_verdict(first, "maybe")
    with pytest.raises(UnknownInteraction, match="no interaction 99"):
        store.set_verdict(99, "right")
    with pytest.raises(StoreError, match="no revision"):
        store.set_revision_verdict(first, "right")
    with pytest.raises(StoreError, match="question is empty"):
        store.add_answer(request_id="r", prompt=" ", messages=[], answer="", adapter_round=0)
    assert store.get(first).verdict is None  # nothing half-written by the refusals

    judged = store.set_verdict(first, "wrong", "  <b>not a pet</b>  ")
    assert judged.hint == "<b>not a pet</b>"  # stored verbatim (the page displays it as text)
    store.add_revision(first, "a dog", adapter_round=0)
    assert store.set_revision_verdict(first, "right").revision_verdict == "right"
    store.mark_used([first], round_num=4)
    assert store.judged_unused() == [] and store.get(first).used_in_round == 4
    with pytest.raises(StoreError, match="already used for training in round 4"):
        store.set_verdict(first, "right")


def test_provider_human_needs_an_algorithm_that_learns_from_verdicts():
    with pytest.raises(ConfigError, match="feedback.provider 'human' trains spear"):
        load_config(None, ["feedback.provider=human", "algorithm.name=grpo"])


@pytest.fixture
def human_setup(tiny_model_dir, tmp_path):
    from spearfl.models.policy import Policy

    cfg = load_config(
        None,
        [
            f"model.model_name={tiny_model_dir}",
            "feedback.provider=human",
            "fl.local_train_steps=2",
            "optim.batch_size=2",
            "optim.lr=0.01",
            "lora.last_n_layers=1",
            "lora.r=4",
        ],
    )
    return cfg, Policy.from_config(cfg), tmp_path / "device"


def _fill(store: FeedbackStore) -> dict[str, int]:
    ids = {name: _ask(store, i) for i, name in enumerate(["right", "fixed", "unfixed", "bare"])}
    _ask(store, 9)  # never judged: not used
    store.set_verdict(ids["right"], "right")
    for name in ("fixed", "unfixed", "bare"):
        store.set_verdict(ids[name], "wrong", "it barks")
    store.add_revision(ids["fixed"], "a dog", 0)
    store.set_revision_verdict(ids["fixed"], "right")
    store.add_revision(ids["unfixed"], "a cow", 0)
    store.set_revision_verdict(ids["unfixed"], "wrong")
    return ids


def test_judged_interactions_become_wins_and_confidence_weighted_losses(human_setup):
    _, policy, device = human_setup
    store = FeedbackStore.for_device(device)
    ids = _fill(store)
    found = human_rollout(policy, store, {})
    wins, losses = found.result.wins, found.result.losses
    assert sorted(found.used_ids) == sorted(ids.values())
    assert [w.text for w in wins] == ["a cat", "a dog"]  # the right answer, the fixed revision
    assert [(t.text, t.confidence) for t in losses] == [
        ("a cat", CONFIDENCE_FIXED),
        ("a cat", CONFIDENCE_UNFIXED),
        ("a cat", CONFIDENCE_UNFIXED),
    ]
    # the revision is paired with the original prompt, tokenised as the page showed it
    fixed_prompt = tuple(policy.encode(_messages("question 1?")))
    assert wins[1].prompt_ids == fixed_prompt
    assert wins[1].completion_ids == tuple(
        policy.tokenizer("a dog", add_special_tokens=False)["input_ids"]
    )
    s = found.result.stats
    assert (s["num_rollouts"], s["y0_correct"], s["revisions_successful"]) == (4, 1, 1)
    assert (s["losses_fixed"], s["losses_unfixed"], s["tokens_generated"]) == (1, 2, 0)


def test_spear_trains_on_the_inbox_once_then_reports_zero_weight(human_setup):
    cfg, policy, device = human_setup
    task = EmbeddedCategoryTask(seed=42, num_train_examples=40, num_eval_examples=8)
    store = FeedbackStore.for_device(device)
    ids = _fill(store)
    received = policy.get_adapter()
    spear = SpearUpdate(cfg, policy, task, HumanFeedback())
    ctx = RoundContext(1, 2, 0, 42, str(device))
    result = spear.update(received, [], ctx)
    m = result.metrics
    assert (m["wins"], m["losses"], m["trained"]) == (2, 3, 1)
    assert result.n_eff == 2.0
    assert any(not torch.equal(result.adapter[k], received[k]) for k in received)
    assert {store.get(i).used_in_round for i in ids.values()} == {1}

    again = spear.update(result.adapter, [], RoundContext(2, 2, 0, 42, str(device)))
    assert again.n_eff == 0.0 and again.metrics["trained"] == 0
    assert again.metrics["num_rollouts"] == 0
    assert all(torch.equal(again.adapter[k], result.adapter[k]) for k in received)


def test_a_round_whose_training_raises_closes_the_store_and_restores_eval_mode(human_setup):
    """The device's SQLite connection is closed and the model is back in eval mode (as it was
    before the round) when training fails part-way; nothing is marked used, so the judged
    answers wait for the next round."""
    cfg, policy, device = human_setup
    task = EmbeddedCategoryTask(seed=42, num_train_examples=40, num_eval_examples=8)
    store = FeedbackStore.for_device(device)
    ids = _fill(store)
    wal = device / "feedback.sqlite-wal"  # SQLite removes it when the last connection closes
    assert wal.exists()
    store.close()
    assert not wal.exists()

    class DeviceLost(RuntimeError):
        pass

    def fail_in_training(module, args):
        if module.training:  # only the training forward passes, never generation
            raise DeviceLost("accelerator lost mid-update")

    layer = next(m for name, m in policy.model.named_modules() if name.endswith("lora_A.default"))
    handle = layer.register_forward_pre_hook(fail_in_training)
    assert not policy.model.training
    spear = SpearUpdate(cfg, policy, task, HumanFeedback())
    try:
        with pytest.raises(DeviceLost):
            spear.update(policy.get_adapter(), [], RoundContext(1, 2, 0, 42, str(device)))
    finally:
        handle.remove()
    assert not wal.exists()  # the provider's connection was closed
    assert not policy.model.training and not any(m.training for m in policy.model.modules())
    reopened = FeedbackStore.for_device(device)
    assert {reopened.get(i).used_in_round for i in ids.values()} == {None}
    assert len(reopened.judged_unused()) == 4
    reopened.close()


def test_the_human_provider_is_built_from_the_config_and_cannot_judge_live(human_setup):
    from spearfl.tasks.registry import build_feedback

    cfg, _, _ = human_setup
    task = EmbeddedCategoryTask(seed=42, num_train_examples=40, num_eval_examples=8)
    provider = build_feedback(cfg, task)
    assert isinstance(provider, HumanFeedback)
    example = task.load().train[0]
    with pytest.raises(NotImplementedError, match="judges only on the device's page"):
        provider.check(example, example.gold)
    with pytest.raises(ValueError, match="needs the device's folder"):
        with provider.judged(None, [], RoundContext(1, 2, 0, 42, None)):
            pass
