"""Map ``data.dataset`` to a task, and the task's feedback provider."""

from __future__ import annotations

from collections.abc import Callable

from spearfl.config import Config
from spearfl.feedback.base import FeedbackProvider
from spearfl.feedback.oracle import OracleFeedback
from spearfl.tasks.arc import ArcChallengeTask
from spearfl.tasks.base import Task
from spearfl.tasks.embedded import EmbeddedCategoryTask


def _embedded(cfg: Config) -> Task:
    d = cfg.data
    return EmbeddedCategoryTask(
        seed=d.seed, num_train_examples=d.num_train_examples, num_eval_examples=d.num_eval_examples
    )


def _arc(cfg: Config) -> Task:
    d, f = cfg.data, cfg.feedback
    return ArcChallengeTask(
        path=d.path,
        config_name=d.config_name or "ARC-Challenge",
        split=d.split,
        eval_split=d.eval_split or "test",
        eval_fraction=d.eval_fraction,
        max_eval_examples=d.max_eval_examples,
        hint_style=f.mc_hint_style,
        hint_words=f.mc_hint_words,
        skip_bad_rows=d.skip_bad_rows,
        cache_dir=cfg.hf.dataset_cache_dir,
    )


TASKS: dict[str, Callable[[Config], Task]] = {
    "embedded": _embedded,
    "arc_challenge": _arc,
    "allenai/ai2_arc": _arc,
}


def build_task(cfg: Config) -> Task:
    try:
        factory = TASKS[cfg.data.dataset]
    except KeyError:
        raise ValueError(
            f"data.dataset: unknown dataset {cfg.data.dataset!r}; known: {', '.join(sorted(TASKS))}"
        ) from None
    return factory(cfg)


def build_feedback(cfg: Config, task: Task) -> FeedbackProvider:
    """The oracle decides correctness for both settings; ``none`` only turns revisions off."""
    return OracleFeedback(task)
