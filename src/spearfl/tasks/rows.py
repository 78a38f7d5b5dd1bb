"""Reading raw benchmark rows, remembering exactly where each one came from.

Every benchmark task reads the same kinds of sources: local ``.jsonl`` / ``.json`` / ``.parquet``
files laid out like the Hugging Face datasets (one file per split, or several shards), or the Hub
itself. Keeping the file name and row number with each row means any problem found later
(a missing field, an answer key that is not among the labels) can be reported precisely, and a
run can choose to skip such rows while still saying how many it dropped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".parquet")
_SPLIT_SEPARATORS = (".", "_", "-")


SKIP_ADVICE = "fix or remove the row, or set data.skip_bad_rows: true to skip and count such rows"


class DataError(ValueError):
    """A malformed row. The message always starts with ``"<file>, row <n>: "`` so a user can go
    straight to the offending line; ``advice`` (what to do) follows the reason."""

    def __init__(self, file: str, row: int, reason: str, advice: str = "") -> None:
        self.file = file
        self.row = row
        self.reason = reason
        self.advice = advice
        super().__init__(f"{file}, row {row}: {reason}" + (f"; {advice}" if advice else ""))


class SplitNotFoundError(LookupError):
    """The requested split has no files locally (or does not exist on the Hub).

    Distinct from :class:`DataError` so callers can fall back to another split or to a slice of
    train without swallowing genuine row errors.
    """


@dataclass(frozen=True)
class RowSource:
    """One raw row plus its provenance.

    ``row`` is 1-based: the line number for JSON-lines files (blank lines still count, so it
    matches what an editor shows), the position in the list for a ``.json`` array, the row index
    + 1 for parquet and Hub datasets.
    """

    file: str
    row: int
    data: dict[str, Any]


class BadRowPolicy:
    """Decides what happens to a malformed row: fail loudly, or skip it and keep count.

    Failing is the default because silently dropping rows changes the benchmark; skipping exists
    for messy private data, and the count (plus the first few messages) goes to the run log.
    """

    def __init__(self, skip_bad_rows: bool = False, keep_messages: int = 5) -> None:
        self.skip_bad_rows = skip_bad_rows
        self.keep_messages = keep_messages
        self._count = 0
        self.messages: list[str] = []

    @property
    def count(self) -> int:
        """How many rows were skipped."""
        return self._count

    def handle(self, error: DataError) -> None:
        """Raise ``error`` (saying how to skip such rows), or record it when skipping is
        allowed."""
        if not self.skip_bad_rows:
            raise DataError(error.file, error.row, error.reason, SKIP_ADVICE) from None
        self._count += 1
        if len(self.messages) < self.keep_messages:
            self.messages.append(str(error))

    def summary(self) -> str:
        """A one-line report for the run log ('' when nothing was skipped)."""
        if not self._count:
            return ""
        noun = "row" if self._count == 1 else "rows"
        first = "; ".join(self.messages)
        return f"skipped {self._count} malformed {noun} (first: {first})"


# --------------------------------------------------------------------------- local files
def find_split_files(path: str | Path, split: str) -> list[Path]:
    """Data files in folder ``path`` that belong to ``split``, sorted.

    A file belongs to the split when its name is the split name followed by ``.``, ``_`` or
    ``-`` (``train.jsonl``, ``validation_part1.jsonl``, ``train-00000-of-00001.parquet``). The
    separator rule stops ``train`` from claiming e.g. ``trainer_notes.json``.
    """
    folder = Path(path)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        if not child.is_file() or child.suffix.lower() not in SUPPORTED_SUFFIXES:
            continue
        name = child.name
        if name.startswith(split) and name[len(split) : len(split) + 1] in _SPLIT_SEPARATORS:
            found.append(child)
    return sorted(found)


def read_local_rows(
    path: str | Path, split: str, policy: BadRowPolicy | None = None
) -> list[RowSource]:
    """All rows of ``split`` from a local file or folder.

    A file is read whatever ``split`` says (the caller chose it); a folder contributes the files
    :func:`find_split_files` picks. Rows that are not valid JSON objects go through ``policy``
    (default: raise :class:`DataError`).
    """
    policy = policy or BadRowPolicy()
    source = Path(path)
    if source.is_file():
        files = [source]
    elif source.is_dir():
        files = find_split_files(source, split)
        if not files:
            present = sorted(p.name for p in source.iterdir())
            raise SplitNotFoundError(
                f"no files for split {split!r} in {source} (expected names like "
                f"'{split}.jsonl' or '{split}-00000-of-00001.parquet'); found: "
                f"{', '.join(present) or 'nothing'}"
            )
    else:
        raise FileNotFoundError(f"dataset path does not exist: {source}")
    rows: list[RowSource] = []
    for file in files:
        rows.extend(_read_file(file, policy))
    return rows


def _read_file(file: Path, policy: BadRowPolicy) -> list[RowSource]:
    suffix = file.suffix.lower()
    if suffix == ".jsonl":
        return _read_json_lines(file, file.read_text(encoding="utf-8"), policy)
    if suffix == ".json":
        return _read_json(file, policy)
    if suffix == ".parquet":
        return _read_parquet(file, policy)
    raise ValueError(f"{file}: unsupported file type (use one of {', '.join(SUPPORTED_SUFFIXES)})")


def _read_json_lines(file: Path, text: str, policy: BadRowPolicy) -> list[RowSource]:
    # Parsed line by line with the stdlib so a broken line is reported by its own number.
    rows: list[RowSource] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            reason = f"invalid JSON at column {exc.colno}: {exc.msg}"
            policy.handle(DataError(str(file), number, reason))
            continue
        rows.extend(_as_rows(file, [(number, data)], policy))
    return rows


def _read_json(file: Path, policy: BadRowPolicy) -> list[RowSource]:
    text = file.read_text(encoding="utf-8")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        # Not a single JSON document: the Hub's ".json" files are often JSON lines.
        return _read_json_lines(file, text, policy)
    if isinstance(whole, list):
        return _as_rows(file, enumerate(whole, start=1), policy)
    return _as_rows(file, [(1, whole)], policy)


def _read_parquet(file: Path, policy: BadRowPolicy) -> list[RowSource]:
    import pyarrow.parquet as pq  # imported lazily: only parquet users pay for it

    try:
        records = pq.read_table(file).to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types for a broken file
        raise ValueError(f"{file}: cannot read parquet file: {exc}") from exc
    return _as_rows(file, enumerate(records, start=1), policy)


def _as_rows(
    file: Path, numbered: Iterable[tuple[int, Any]], policy: BadRowPolicy
) -> list[RowSource]:
    rows = []
    for number, data in numbered:
        if not isinstance(data, dict):
            kind = type(data).__name__
            policy.handle(DataError(str(file), number, f"expected a JSON object, got {kind}"))
            continue
        rows.append(RowSource(file=str(file), row=number, data=data))
    return rows


# --------------------------------------------------------------------------------- Hub
def read_hub_rows(
    hub_id: str, config_name: str | None, split: str, cache_dir: str | None = None
) -> list[RowSource]:
    """All rows of ``split`` of a Hugging Face Hub dataset.

    Provenance is ``file = "<hub_id>[<split>]"`` and ``row = index + 1``. Raises
    :class:`SplitNotFoundError` when the dataset has no such split, so the caller can fall back.
    """
    import datasets  # imported lazily: heavy, and not needed for local files

    loaded = datasets.load_dataset(hub_id, config_name, cache_dir=cache_dir)
    if split in loaded:
        table = loaded[split]
    elif "[" in split:  # slicing syntax such as "train[:10%]"
        table = datasets.load_dataset(hub_id, config_name, split=split, cache_dir=cache_dir)
    else:
        available = ", ".join(sorted(loaded.keys()))
        raise SplitNotFoundError(f"{hub_id} has no split {split!r}; available: {available}")
    label = f"{hub_id}[{split}]"
    return [RowSource(file=label, row=i + 1, data=dict(rec)) for i, rec in enumerate(table)]


# ------------------------------------------------------------------------- field checks
class RowFields:
    """Typed access to one row's fields, for a task's ``parse_row``.

    Every failed check raises :class:`DataError` with the row's file and number, so each task
    states *what* it needs and the error wording stays the same across benchmarks.
    """

    def __init__(self, source: RowSource) -> None:
        self.source = source
        self.data = source.data

    def error(self, reason: str) -> DataError:
        """A :class:`DataError` for this row (to raise)."""
        return DataError(self.source.file, self.source.row, reason)

    def require(self, *keys: str) -> None:
        """All ``keys`` are present and not null."""
        missing = [key for key in keys if self.data.get(key) is None]
        if missing:
            raise self.error(f"missing required field(s): {', '.join(missing)}")

    def text(self, key: str) -> str:
        """A non-empty string field, stripped."""
        value = self.data.get(key)
        if value is None:
            raise self.error(f"missing required field(s): {key}")
        if not isinstance(value, str) or not value.strip():
            raise self.error(f"{key!r} must be a non-empty string")
        return value.strip()

    def texts(self, key: str, count: int | None = None) -> list[str]:
        """A list of strings (exactly ``count`` of them when given), each stripped."""
        value = self.data.get(key)
        if value is None:
            raise self.error(f"missing required field(s): {key}")
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.error(f"{key!r} must be a list of strings, got {_describe(value)}")
        if count is not None and len(value) != count:
            raise self.error(f"{key!r} must have {count} entries, got {len(value)}")
        return [item.strip() for item in value]

    def index(self, key: str, count: int) -> int:
        """A 0-based position below ``count``: an int or a digit string (``3`` or ``"3"``)."""
        value = self.data.get(key)
        if value is None:
            raise self.error(f"missing required field(s): {key}")
        if isinstance(value, int) and not isinstance(value, bool):
            position = value
        elif isinstance(value, str) and value.strip().isdigit():
            position = int(value.strip())
        else:
            raise self.error(f"{key!r} must be an index 0-{count - 1}, got {value!r}")
        if not 0 <= position < count:
            raise self.error(f"{key!r} must be an index 0-{count - 1}, got {value!r}")
        return position


def _describe(value: Any) -> str:
    if isinstance(value, list):
        kinds = sorted({type(item).__name__ for item in value})
        return f"a list of {'/'.join(kinds)}" if kinds else "an empty list"
    return type(value).__name__
