"""What SPEAR's unlikelihood term does to the model, measured update by update.

Runs SPEAR's own rounds in one process (the server's client draws and averaging, as
``round_cost.py`` does). At each client update it takes the update's rollout once and trains
on it twice from the same global adapter, the same random state and the same batches: once as
SPEAR (``spear.lambda_lose`` as configured) and once as feedback-SFT (the same with the
unlikelihood weight at zero), so the only difference between the two adapters is the
unlikelihood term. The SPEAR adapter is the one sent back, so the rounds follow SPEAR's run.

For each update it reports:
- where the penalty lands: how many of the penalised tokens lie in the declared answer, and how
  many losses have no valid answer (their whole completion is penalised);
- whether the penalised answer is somebody's right answer: a wrong option on one question is
  the gold answer of questions of its own category, in training and in the held-out set, and
  its first token may also start the question's own gold answer;
- the log-probability of the penalised tokens and of the wins, before the update and after
  each of the two;
- on the held-out questions, the gold option's share of the option likelihood (softmax over
  the options' log-likelihoods) before and after each, for all questions and for those whose
  gold answer this update penalised somewhere, and greedy exact match.

    .venv/bin/python benchmarks/unlikelihood_probe.py [CONFIG] [--rounds 4] [--set key=value]

``--rounds N`` runs the config's first N rounds, so its updates are those of ``spearfl run``.

Prints one JSON line per client update and a JSON summary (means over updates).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from spearfl.algorithms.base import RoundContext
from spearfl.algorithms.feedback_sft import FeedbackSFTUpdate
from spearfl.algorithms.masks import token_char_spans
from spearfl.algorithms.rollout import Trace
from spearfl.algorithms.scoring import align_flags, build_batch, completion_logprobs
from spearfl.algorithms.spear import SpearUpdate, cap_losses
from spearfl.config import Config, load_config
from spearfl.evaluation.evaluator import Evaluator
from spearfl.federation.server import Delivery, FederatedServer, Reply
from spearfl.federation.worker import ClientWorker
from spearfl.models.policy import Policy
from spearfl.presets import default_config_path
from spearfl.tasks.base import Example, Task
from spearfl.tasks.embedded import normalise

ROWS_PER_PASS = 16


def row_logprobs(
    policy: Policy, rows: Sequence[tuple[Sequence[int], Sequence[int]]], flags: list[list[bool]]
) -> list[float]:
    """Sum of log p over each row's flagged completion tokens (no dropout, no gradients)."""
    out: list[float] = []
    was_training = policy.model.training
    policy.model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(rows), ROWS_PER_PASS):
                part = slice(start, start + ROWS_PER_PASS)
                batch = build_batch(rows[part], policy.tokenizer.pad_token_id, policy.device)
                mask = align_flags(flags[part], batch.targets.shape[1], policy.device)
                logp = completion_logprobs(policy.model, batch)
                out += (logp * mask).sum(-1).tolist()
    finally:
        policy.model.train(was_training)
    return out


def gold_shares(evaluator: Evaluator) -> tuple[list[float], list[bool]]:
    """Per held-out question: the gold option's softmax share over the options' log-likelihoods,
    and whether the greedy answer is the gold one."""
    texts, scores = evaluator.option_outputs()
    shares, hits = [], []
    for ex, text, row in zip(evaluator.examples, texts, scores):
        logits = torch.tensor(row, dtype=torch.float64)
        shares.append(float(torch.softmax(logits, 0)[ex.gold_index]))
        hits.append(evaluator.task.extract_answer(ex, text) == ex.gold)
    return shares, hits


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def first_tokens(policy: Policy, text: str) -> set[int]:
    """The first token of ``text`` as it may be written: at the start, or after a space."""
    encode = policy.tokenizer
    ids = [encode(t, add_special_tokens=False)["input_ids"] for t in (text, " " + text)]
    return {row[0] for row in ids if row}


def where_penalty_lands(
    policy: Policy,
    task: Task,
    losses: Sequence[Trace],
    flags: Sequence[list[bool]],
    wins: Sequence[Trace],
) -> dict[str, Any]:
    """Penalised tokens inside / outside the declared answer, losses with no valid answer, and
    penalised tokens that the same update's wins also contain (MLE pushes those up)."""
    inside = outside = invalid = first_shared = in_wins = 0
    win_tokens = {t for w in wins for t in w.completion_ids}
    for trace, row in zip(losses, flags):
        in_wins += sum(1 for t, f in zip(trace.completion_ids, row) if f and t in win_tokens)
        text = policy.tokenizer.decode(list(trace.completion_ids), skip_special_tokens=True)
        span = task.answer_span(trace.example, text)
        if span is None:
            invalid += 1
            outside += sum(row)
            continue
        spans = token_char_spans(policy.tokenizer, trace.completion_ids)
        for flagged, (a, b) in zip(row, spans):
            if flagged:
                if a < span[1] and span[0] < b:
                    inside += 1
                else:
                    outside += 1
        penalised = [t for t, f in zip(trace.completion_ids, row) if f]
        if penalised and penalised[0] in first_tokens(policy, trace.example.gold):
            first_shared += 1
    total = inside + outside
    return {
        "losses": len(losses),
        "losses_without_valid_answer": invalid,
        "penalised_tokens": total,
        "penalised_in_answer": round(inside / total, 4) if total else None,
        "first_penalised_token_starts_gold": first_shared,
        "penalised_tokens_also_in_wins": in_wins,
    }


def wrong_words(task: Task, losses: Sequence[Trace]) -> list[str]:
    """The options the losses answered (losses with no valid answer have none)."""
    words = []
    for trace in losses:
        answer = task.extract_answer(trace.example, trace.text)
        if answer is not None:
            words.append(normalise(answer))
    return words


class Probe:
    """SPEAR's rounds, with each client update also trained as feedback-SFT and both measured."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.server = FederatedServer(cfg, Path(cfg.output_dir))
        self.evaluator = self.server.evaluator
        self.eval_golds = [normalise(ex.gold) for ex in self.evaluator.examples]
        self.train_golds = {normalise(ex.gold) for ex in self._train_examples()}
        self.rows: list[dict[str, Any]] = []

    def _train_examples(self) -> list[Example]:
        from spearfl.federation.worker import shared_task_data

        return list(shared_task_data(self.cfg)[1].train)

    def eval_view(self, adapter: dict[str, torch.Tensor]) -> tuple[list[float], list[bool]]:
        self.evaluator.policy.set_adapter(adapter)
        return gold_shares(self.evaluator)

    def update(self, adapter: dict[str, torch.Tensor], round_num: int, cid: int) -> Reply:
        cfg = self.cfg
        worker = ClientWorker.for_client(cfg, cid)
        spear = worker.algorithm
        if not isinstance(spear, SpearUpdate) or isinstance(spear, FeedbackSFTUpdate):
            raise SystemExit("the probe runs SPEAR: use algorithm.name=spear")
        sft = FeedbackSFTUpdate(cfg, worker.policy, worker.task, spear.provider)
        policy, task = worker.policy, worker.task
        ctx = RoundContext(round_num, cfg.fl.rounds, cid, cfg.data.seed, str(cfg.device_dir(cid)))
        # As ClientWorker.train seeds it, so the SPEAR update is the run's own.
        torch.manual_seed(ctx.rng("torch").getrandbits(63))
        policy.set_adapter(adapter)
        rollout = spear.rollout(worker.examples, ctx)
        after_rollout = torch.random.get_rng_state()

        # The losses SPEAR trains on: the same capped draw as in train_on (same seeded rng).
        ratio = cfg.spear.max_lose_ratio
        losses = cap_losses(rollout.losses, len(rollout.wins), ratio, ctx.rng("cap"))
        loss_flags = [spear.loss_flags(t) for t in losses]
        loss_rows = [(t.prompt_ids, t.completion_ids) for t in losses]
        win_rows = [(t.prompt_ids, (*t.completion_ids, policy.eos_id)) for t in rollout.wins]
        win_flags = [[True] * len(c) for _, c in win_rows]
        words = wrong_words(task, losses)
        penalised = set(words)
        touched = [i for i, g in enumerate(self.eval_golds) if g in penalised]

        def measure(state: dict[str, torch.Tensor]) -> dict[str, Any]:
            policy.set_adapter(state)
            shares, hits = self.eval_view(state)
            return {
                "loss_logp": _mean(row_logprobs(policy, loss_rows, loss_flags)),
                "win_logp": _mean(row_logprobs(policy, win_rows, win_flags)),
                "gold_share": _mean(shares),
                "gold_share_penalised_golds": _mean([shares[i] for i in touched]),
                "exact_match": _mean([float(h) for h in hits]),
            }

        row: dict[str, Any] = {
            "round": round_num,
            "client": cid,
            "wins": len(rollout.wins),
            "losses_before_cap": len(rollout.losses),
        }
        row.update(where_penalty_lands(policy, task, losses, loss_flags, rollout.wins))
        row["wrong_answers_that_are_eval_golds"] = sum(w in set(self.eval_golds) for w in words)
        row["wrong_answers_that_are_train_golds"] = sum(w in self.train_golds for w in words)
        row["valid_wrong_answers"] = len(words)
        row["eval_questions_with_penalised_gold"] = len(touched)
        row["before"] = measure(adapter)
        results = {}
        for name, algorithm in (("spear", spear), ("feedback_sft", sft)):
            policy.set_adapter(adapter)
            torch.random.set_rng_state(after_rollout)
            results[name] = algorithm.train_on(rollout, adapter, ctx, judged_before=False)
            row[name] = measure(results[name].adapter)
        print(json.dumps(row), flush=True)
        self.rows.append(row)
        result = results["spear"]
        state = {k: v.detach().to("cpu").clone() for k, v in result.adapter.items()}
        metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
        metrics["n_eff"] = float(result.n_eff)
        return Reply(cid, state, metrics)

    def run(self, rounds: int) -> dict[str, Any]:
        """The config's first ``rounds`` rounds (its learning-rate schedule unchanged, so the
        SPEAR updates are those of ``spearfl run``)."""
        for r in range(1, min(rounds, self.cfg.fl.rounds) + 1):

            def send(round_num: int, clients: list[int], adapter: dict) -> Delivery:
                delivery = Delivery()
                delivery.replies += [self.update(dict(adapter), round_num, c) for c in clients]
                return delivery

            outcome = self.server.collect(r, send)
            self.server.aggregate(outcome.accepted)
        return summarise(self.rows)


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Totals of the counts and means over updates of the measured values."""
    counts = [
        "losses",
        "losses_without_valid_answer",
        "penalised_tokens",
        "first_penalised_token_starts_gold",
        "penalised_tokens_also_in_wins",
        "valid_wrong_answers",
        "wrong_answers_that_are_eval_golds",
        "wrong_answers_that_are_train_golds",
    ]
    out: dict[str, Any] = {"updates": len(rows), **{k: sum(r[k] for r in rows) for k in counts}}
    shares = [r["penalised_in_answer"] for r in rows if r["penalised_in_answer"] is not None]
    out["penalised_in_answer"] = _mean(shares)
    for when in ("before", "spear", "feedback_sft"):
        out[when] = {
            key: _mean([r[when][key] for r in rows if r[when][key] is not None])
            for key in rows[0][when]
        }
    for key in ("loss_logp", "win_logp", "gold_share", "gold_share_penalised_golds"):
        diffs = [
            r["spear"][key] - r["feedback_sft"][key]
            for r in rows
            if r["spear"][key] is not None and r["feedback_sft"][key] is not None
        ]
        out[f"spear_minus_sft_{key}"] = _mean(diffs)
    out["wrong_answer_prob_before"] = _prob(out["before"]["loss_logp"])
    out["wrong_answer_prob_spear"] = _prob(out["spear"]["loss_logp"])
    out["wrong_answer_prob_sft"] = _prob(out["feedback_sft"]["loss_logp"])
    return out


def _prob(logp: float | None) -> float | None:
    return None if logp is None else round(math.exp(logp), 4)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default=str(default_config_path()))
    parser.add_argument("--rounds", type=int, default=4, help="the first N of the run's rounds")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    summary = Probe(cfg).run(args.rounds)
    print(json.dumps({"config": args.config, **summary}, indent=2))


if __name__ == "__main__":
    main()
