"""Map ``data.dataset`` to a task, and the task's feedback provider.

The embedded task takes ``data.seed``, its sizes and ``data.max_eval_examples``. Each benchmark
answers to the name the paper's config files use (``arc_challenge``, ``hellaswag``,
``math_mcqa``, ``strategy_qa``) and to its Hugging Face id. Benchmark tasks get the same data
settings (``data.path``, ``split``, ``eval_split``, ``eval_fraction``,
``max_eval_examples``, ``skip_bad_rows``, the datasets cache of ``hf``); the letter-answer ones
also get ``feedback.mc_hint_style`` and ``feedback.mc_hint_words``. One rule differs:
MATH-MCQA's hint fallback uses ``max(feedback.mc_hint_words, 10)`` words, so a config written
for ARC (3 words) still gets the paper's 10 there, and a larger value still wins
(:func:`task_notes` says so; a run prints it once). ``qa`` reads your own rows through the
``qa`` section's mapping (:mod:`spearfl.tasks.qa`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spearfl.config import Config, FeedbackConfig, QAConfig
from spearfl.feedback.base import FeedbackProvider
from spearfl.feedback.oracle import OracleFeedback
from spearfl.hub import hub_caches
from spearfl.tasks.arc import ArcChallengeTask
from spearfl.tasks.base import Task
from spearfl.tasks.embedded import EmbeddedCategoryTask
from spearfl.tasks.hellaswag import HellaSwagTask
from spearfl.tasks.math_mcqa import DEFAULT_HINT_WORDS as MATH_HINT_WORDS
from spearfl.tasks.math_mcqa import MathMCQATask
from spearfl.tasks.qa import QATask
from spearfl.tasks.strategyqa import StrategyQATask


def _embedded(cfg: Config) -> Task:
    d = cfg.data
    return EmbeddedCategoryTask(
        seed=d.seed,
        num_train_examples=d.num_train_examples,
        num_eval_examples=d.num_eval_examples,
        max_eval_examples=d.max_eval_examples,
    )


def _dataset_kwargs(cfg: Config) -> dict[str, Any]:
    """The data settings every benchmark task takes; unset ``config_name`` / ``eval_split`` leave
    the task's own default (e.g. ARC-Challenge / test, HellaSwag's validation)."""
    d = cfg.data
    kwargs: dict[str, Any] = {
        "path": d.path,
        "split": d.split,
        "eval_fraction": d.eval_fraction,
        "max_eval_examples": d.max_eval_examples,
        "skip_bad_rows": d.skip_bad_rows,
        "cache_dir": hub_caches(cfg.hf).datasets,
    }
    if d.config_name:
        kwargs["config_name"] = d.config_name
    if d.eval_split:
        kwargs["eval_split"] = d.eval_split
    return kwargs


def _arc(cfg: Config) -> Task:
    f = cfg.feedback
    return ArcChallengeTask(
        **_dataset_kwargs(cfg), hint_style=f.mc_hint_style, hint_words=f.mc_hint_words
    )


def _hellaswag(cfg: Config) -> Task:
    f = cfg.feedback
    return HellaSwagTask(
        **_dataset_kwargs(cfg), hint_style=f.mc_hint_style, hint_words=f.mc_hint_words
    )


def _strategyqa(cfg: Config) -> Task:
    return StrategyQATask(**_dataset_kwargs(cfg))


def _math_mcqa(cfg: Config) -> Task:
    # The paper's MATH-MCQA fallback quotes 10 words where ARC quotes 3; one config key serves
    # both, so this task takes the larger of feedback.mc_hint_words and 10.
    f = cfg.feedback
    words = max(f.mc_hint_words, MATH_HINT_WORDS)
    return MathMCQATask(**_dataset_kwargs(cfg), hint_style=f.mc_hint_style, hint_words=words)


def _qa(cfg: Config) -> Task:
    # Your own rows: the qa section maps their fields; there is no Hub copy to fall back on.
    kwargs = _dataset_kwargs(cfg)
    kwargs.pop("config_name", None)
    return QATask(**kwargs, spec=cfg.qa)


TASKS: dict[str, Callable[[Config], Task]] = {
    "embedded": _embedded,
    "arc_challenge": _arc,
    "allenai/ai2_arc": _arc,
    "hellaswag": _hellaswag,
    "Rowan/hellaswag": _hellaswag,
    "strategy_qa": _strategyqa,
    "strategyqa": _strategyqa,
    "ChilleD/StrategyQA": _strategyqa,
    "math_mcqa": _math_mcqa,
    "stellaathena/math_mcqa": _math_mcqa,
    "qa": _qa,
}


_PAPER_NAME = {
    _embedded: "embedded",
    _arc: "arc_challenge",
    _hellaswag: "hellaswag",
    _math_mcqa: "math_mcqa",
    _strategyqa: "strategy_qa",
    _qa: "qa",
}


def paper_name(dataset: str) -> str | None:
    """The paper's name of the task ``dataset`` selects (``"ChilleD/StrategyQA"`` ->
    ``"strategy_qa"``); None for a name we do not know."""
    factory = TASKS.get(dataset)
    return _PAPER_NAME[factory] if factory else None


class UnknownTaskError(ValueError):
    """``data.dataset`` names no task we implement."""


def build_task(cfg: Config) -> Task:
    try:
        factory = TASKS[cfg.data.dataset]
    except KeyError:
        raise UnknownTaskError(
            f"data.dataset {cfg.data.dataset!r} is not a known dataset; known: "
            f"{', '.join(sorted(TASKS))}"
        ) from None
    return factory(cfg)


def task_notes(cfg: Config) -> list[str]:
    """Settings a task replaces or ignores, in words, for the run's log and ``spearfl check``."""
    notes = []
    name = paper_name(cfg.data.dataset)
    f = cfg.feedback
    if name == "math_mcqa" and f.mc_hint_words < MATH_HINT_WORDS:
        notes.append(
            f"math_mcqa: the hint's fallback quotes {MATH_HINT_WORDS} words of the correct option "
            f"(max(feedback.mc_hint_words = {f.mc_hint_words}, {MATH_HINT_WORDS}), as the paper)"
        )
    if name != "qa" and cfg.qa != QAConfig():
        notes.append(
            f"the qa section has no effect on {cfg.data.dataset} (only data.dataset qa reads it)"
        )
    if name in ("strategy_qa", "embedded", "qa"):
        defaults = FeedbackConfig()
        for key in ("mc_hint_words", "mc_hint_style"):
            if getattr(f, key) != getattr(defaults, key):
                notes.append(
                    f"feedback.{key} = {getattr(f, key)!r} has no effect on "
                    f"{cfg.data.dataset} (its hint follows its own rule)"
                )
    return notes


def build_feedback(cfg: Config, task: Task) -> FeedbackProvider:
    """``human``: what people judged on the device's page. Otherwise the oracle decides
    correctness; ``verdict_only`` keeps its verdicts and drops its hints and SPEAR's revisions."""
    if cfg.feedback.provider == "human":
        from spearfl.feedback.human import HumanFeedback  # imported lazily: it needs torch

        return HumanFeedback()
    return OracleFeedback(task)
