"""Tasks whose examples come from benchmark rows: which rows train and which evaluate.

Every benchmark task reads rows the same way (local files or the Hub, see
:mod:`spearfl.tasks.rows`) and resolves its eval split by the same rules, so those live here
once and a benchmark only declares its Hub id, its default eval split and how to parse a row.

Split resolution (SPEC §5: "the named held-out split, else the last 2% of train"):

* eval: the ``eval_split`` rows if they exist (Hub split, or local files named after it; a task
  may name stand-ins through :meth:`DatasetTask.local_eval_candidates`); otherwise the last
  ``eval_fraction`` of the training rows. A local single file has no splits, so it is always
  sliced. An eval split that resolves to the training split itself is sliced too, so training and
  eval never share rows.
* train: the ``split`` rows. When they do not exist but the eval split does (the shared offline
  HellaSwag copy holds validation rows only), the eval split's rows are used for both: training
  on the head, eval on the last ``eval_fraction``. A warning says so.
* ``max_eval_examples`` then keeps the first rows of whatever eval became.
"""

from __future__ import annotations

import enum
import logging
from abc import abstractmethod
from pathlib import Path
from typing import Final

from spearfl.tasks.base import Example, Task, TaskData
from spearfl.tasks.rows import (
    BadRowPolicy,
    DataError,
    RowSource,
    SplitNotFoundError,
    find_split_files,
    read_hub_rows,
    read_local_rows,
)

logger = logging.getLogger(__name__)


class Default(enum.Enum):
    """Marks a constructor argument left to the task's own default (``None`` means something)."""

    TOKEN = "default"


DEFAULT: Final = Default.TOKEN


def split_off_eval(examples: list[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """Hold out the last ``fraction`` of ``examples`` (at least one row, rounded to nearest),
    leaving at least one for training."""
    if len(examples) < 2:
        raise ValueError(
            f"cannot hold out an eval slice from {len(examples)} example(s); "
            "provide an eval split or more data"
        )
    n_eval = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    return examples[:-n_eval], examples[-n_eval:]


class DatasetTask(Task):
    """A task loaded from benchmark rows; subclasses set the class attributes and
    :meth:`parse_row`.

    Cooperative: keyword arguments this class does not know go on to the next base, so a
    letter-choice benchmark is ``class X(DatasetTask, LetterChoiceTask)`` and takes both sets.
    """

    hub_id: str = ""
    """Hugging Face dataset id used when no local ``path`` is given."""
    hub_config: str | None = None
    """Hub configuration name (e.g. ARC's ``"ARC-Challenge"``)."""
    default_eval_split: str | None = "test"
    """Held-out split tried when the caller does not name one."""

    def __init__(
        self,
        *,
        path: str | None = None,
        hub_id: str | None = None,
        config_name: str | None | Default = DEFAULT,
        split: str = "train",
        eval_split: str | None | Default = DEFAULT,
        eval_fraction: float = 0.02,
        max_eval_examples: int | None = None,
        skip_bad_rows: bool = False,
        cache_dir: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")
        if max_eval_examples is not None and max_eval_examples < 1:
            raise ValueError(f"max_eval_examples must be >= 1 or None, got {max_eval_examples!r}")
        self.path = path
        self.hub_id = hub_id or type(self).hub_id
        self.config_name = type(self).hub_config if config_name is DEFAULT else config_name
        self.split = split
        self.eval_split = self.default_eval_split if eval_split is DEFAULT else eval_split
        self.eval_fraction = eval_fraction
        self.max_eval_examples = max_eval_examples
        self.skip_bad_rows = skip_bad_rows
        self.cache_dir = cache_dir
        self.bad_rows = BadRowPolicy(skip_bad_rows)
        """Skipped-row count and messages of the latest :meth:`load`."""
        self.resolved_eval_source: str = ""
        """Where the latest :meth:`load` took eval from (a split name or 'last N rows of ...')."""

    def eval_split_used(self) -> str:
        return self.resolved_eval_source

    # ------------------------------------------------------------- to override
    @abstractmethod
    def parse_row(self, source: RowSource) -> Example:
        """Validate one raw row and turn it into an :class:`Example` (or raise DataError)."""

    def local_eval_candidates(self, eval_split: str) -> list[str]:
        """Local split names to try, in order, for ``eval_split`` (stand-ins go after it)."""
        return [eval_split]

    # -------------------------------------------------------------------- load
    def load(self) -> TaskData:
        self.bad_rows = BadRowPolicy(self.skip_bad_rows)
        self.resolved_eval_source = ""
        missing: SplitNotFoundError | None = None
        try:
            train_rows = self._read(self.split)
        except SplitNotFoundError as error:
            missing, train_rows = error, []
        eval_rows = self._read_eval()
        sliced_split = self.split
        if missing is not None:
            if eval_rows is None:
                raise missing
            sliced_split = self.resolved_eval_source
            logger.warning(
                "%s: no %r split; training on the head of %r and evaluating on its tail",
                self.name,
                self.split,
                sliced_split,
            )
            train_rows, eval_rows = eval_rows, None
        train = self._examples(train_rows)
        if eval_rows is None:
            train, evaluation = split_off_eval(train, self.eval_fraction)
            self.resolved_eval_source = f"last {len(evaluation)} rows of {sliced_split}"
        else:
            evaluation = self._examples(eval_rows)
        if self.max_eval_examples is not None:
            evaluation = evaluation[: self.max_eval_examples]
        if self.bad_rows.count:
            logger.warning("%s: %s", self.name, self.bad_rows.summary())
        if not train or not evaluation:
            raise ValueError(
                f"{self.name}: no usable examples (train {len(train)}, eval {len(evaluation)})"
            )
        return TaskData(train=train, eval=evaluation)

    def examples_from(self, path: str | Path) -> list[Example]:
        """Every row of a device's own data file (or the ``split`` files of a folder), parsed
        and checked like the dataset's: what a client with its own data trains on."""
        self.bad_rows = BadRowPolicy(self.skip_bad_rows)
        examples = self._examples(read_local_rows(path, self.split, self.bad_rows))
        if not examples:
            raise ValueError(f"{self.name}: no usable examples in {path}")
        return examples

    def _read(self, split: str) -> list[RowSource]:
        if self.path is not None:
            return read_local_rows(self.path, split, self.bad_rows)
        return read_hub_rows(self.hub_id, self.config_name, split, self.cache_dir)

    def _read_eval(self) -> list[RowSource] | None:
        """Rows of the held-out split (and set :attr:`resolved_eval_source`), or None when
        training rows must be sliced instead."""
        if self.eval_split is None:
            return None
        if self.path is not None:
            folder = Path(self.path)
            if not folder.is_dir():
                return None
            for split in self.local_eval_candidates(self.eval_split):
                if split != self.split and find_split_files(folder, split):
                    self.resolved_eval_source = split
                    return read_local_rows(folder, split, self.bad_rows)
            return None
        if self.eval_split == self.split:
            return None
        try:
            rows = read_hub_rows(self.hub_id, self.config_name, self.eval_split, self.cache_dir)
        except SplitNotFoundError:
            return None
        self.resolved_eval_source = self.eval_split
        return rows

    def _examples(self, rows: list[RowSource]) -> list[Example]:
        examples = []
        for source in rows:
            try:
                examples.append(self.parse_row(source))
            except DataError as error:
                self.bad_rows.handle(error)
        return examples


__all__ = ["DEFAULT", "DatasetTask", "Default", "split_off_eval"]
