"""A device's feedback inbox: what a person asked, what the model said, and what they thought.

One SQLite database per device (stdlib ``sqlite3``, WAL journal, ``synchronous=FULL``): every
write is one transaction committed to disk before the page acknowledges it, so a crash or a
restart loses nothing that was acknowledged. Each new question carries a client-chosen
``request_id`` (unique), so a browser that retries after a crash gets the stored row back
instead of a duplicate.

An interaction follows SPEAR's loop with a person as the provider: the answer ``y0`` (from the
adapter of ``adapter_round``), the person's verdict, for a wrong answer their hint and the
model's revision, and the verdict on that revision. ``used_in_round`` records which federated
round trained on it (NULL: not yet).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STORE_FILE = "feedback.sqlite"
VERDICTS = ("right", "wrong")
MAX_PROMPT_CHARS = 2000
MAX_HINT_CHARS = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS interactions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    prompt TEXT NOT NULL,
    messages TEXT NOT NULL,
    assistant_prefix TEXT NOT NULL DEFAULT '',
    example_uid TEXT,
    answer TEXT NOT NULL,
    adapter_round INTEGER NOT NULL,
    verdict TEXT CHECK (verdict IN ('right', 'wrong')),
    hint TEXT,
    revision TEXT,
    revision_round INTEGER,
    revision_verdict TEXT CHECK (revision_verdict IN ('right', 'wrong')),
    used_in_round INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS pending ON interactions (used_in_round, verdict);
"""


class StoreError(ValueError):
    """A request the inbox refuses; the message says why (shown to the person)."""


class UnknownInteraction(StoreError):
    pass


@dataclass(frozen=True)
class Interaction:
    id: int
    request_id: str
    prompt: str
    messages: list[dict[str, str]]
    assistant_prefix: str
    example_uid: str | None
    answer: str
    adapter_round: int
    verdict: str | None
    hint: str | None
    revision: str | None
    revision_round: int | None
    revision_verdict: str | None
    used_in_round: int | None
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Interaction:
        data = dict(row)
        data["messages"] = json.loads(data["messages"])
        return cls(**data)

    def public(self) -> dict[str, Any]:
        """What the page may show (no internals such as the prompt messages)."""
        return {
            "id": self.id,
            "prompt": self.prompt,
            "answer": self.answer,
            "adapter_round": self.adapter_round,
            "verdict": self.verdict,
            "hint": self.hint,
            "revision": self.revision,
            "revision_round": self.revision_round,
            "revision_verdict": self.revision_verdict,
            "used_in_round": self.used_in_round,
        }


class FeedbackStore:
    """Transactional access to one device's inbox. Safe to open from several processes."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)

    @classmethod
    def for_device(cls, device_dir: str | os.PathLike[str]) -> FeedbackStore:
        return cls(Path(device_dir) / STORE_FILE)

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: the write lock is taken up front, so read-then-write
        sequences cannot interleave with another process's."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _get(self, conn: sqlite3.Connection, interaction_id: int) -> Interaction:
        row = conn.execute("SELECT * FROM interactions WHERE id = ?", (interaction_id,)).fetchone()
        if row is None:
            raise UnknownInteraction(f"no interaction {interaction_id}")
        return Interaction.from_row(row)

    # ---------------------------------------------------------------- writes
    def add_answer(
        self,
        *,
        request_id: str,
        prompt: str,
        messages: Sequence[dict[str, str]],
        answer: str,
        adapter_round: int,
        assistant_prefix: str = "",
        example_uid: str | None = None,
    ) -> tuple[Interaction, bool]:
        """Store a question and the model's answer; returns (interaction, created).

        A ``request_id`` seen before returns the stored interaction unchanged (``created`` is
        False): the retry of an acknowledged request must not add a second row.
        """
        if not prompt.strip():
            raise StoreError("the question is empty")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise StoreError(f"the question is longer than {MAX_PROMPT_CHARS} characters")
        now = time.time()
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT * FROM interactions WHERE request_id = ?", (request_id,)
            ).fetchone()
            if row is not None:
                return Interaction.from_row(row), False
            cursor = conn.execute(
                "INSERT INTO interactions (request_id, prompt, messages, assistant_prefix, "
                "example_uid, answer, adapter_round, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request_id,
                    prompt,
                    json.dumps(list(messages)),
                    assistant_prefix,
                    example_uid,
                    answer,
                    adapter_round,
                    now,
                    now,
                ),  # fmt: skip
            )
            return self._get(conn, int(cursor.lastrowid)), True

    def set_verdict(
        self, interaction_id: int, verdict: str, hint: str | None = None
    ) -> Interaction:
        """The person's verdict on the first answer (a wrong one needs a hint)."""
        if verdict not in VERDICTS:
            raise StoreError(f"verdict must be 'right' or 'wrong', got {verdict!r}")
        if verdict == "wrong" and not (hint or "").strip():
            raise StoreError("a wrong answer needs a hint: say what is off, without the answer")
        if hint is not None and len(hint) > MAX_HINT_CHARS:
            raise StoreError(f"the hint is longer than {MAX_HINT_CHARS} characters")
        with self._transaction() as conn:
            current = self._get(conn, interaction_id)
            if current.used_in_round is not None:
                raise StoreError(
                    f"interaction {interaction_id} was already used for training in round "
                    f"{current.used_in_round}"
                )
            conn.execute(
                "UPDATE interactions SET verdict = ?, hint = ?, revision = NULL, "
                "revision_round = NULL, revision_verdict = NULL, updated_at = ? WHERE id = ?",
                (
                    verdict,
                    hint.strip() if verdict == "wrong" and hint else None,
                    time.time(),
                    interaction_id,
                ),  # fmt: skip
            )
            return self._get(conn, interaction_id)

    def add_revision(self, interaction_id: int, revision: str, adapter_round: int) -> Interaction:
        with self._transaction() as conn:
            current = self._get(conn, interaction_id)
            if current.verdict != "wrong":
                raise StoreError(f"interaction {interaction_id} was not marked wrong")
            conn.execute(
                "UPDATE interactions SET revision = ?, revision_round = ?, "
                "revision_verdict = NULL, updated_at = ? WHERE id = ?",
                (revision, adapter_round, time.time(), interaction_id),
            )
            return self._get(conn, interaction_id)

    def set_revision_verdict(self, interaction_id: int, verdict: str) -> Interaction:
        if verdict not in VERDICTS:
            raise StoreError(f"verdict must be 'right' or 'wrong', got {verdict!r}")
        with self._transaction() as conn:
            current = self._get(conn, interaction_id)
            if current.revision is None:
                raise StoreError(f"interaction {interaction_id} has no revision to judge")
            if current.used_in_round is not None:
                raise StoreError(
                    f"interaction {interaction_id} was already used for training in round "
                    f"{current.used_in_round}"
                )
            conn.execute(
                "UPDATE interactions SET revision_verdict = ?, updated_at = ? WHERE id = ?",
                (verdict, time.time(), interaction_id),
            )
            return self._get(conn, interaction_id)

    def mark_used(self, ids: Sequence[int], round_num: int) -> None:
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE interactions SET used_in_round = ?, updated_at = ? "
                "WHERE id = ? AND used_in_round IS NULL",
                [(round_num, time.time(), i) for i in ids],
            )

    # ----------------------------------------------------------------- reads
    def get(self, interaction_id: int) -> Interaction:
        return self._get(self._conn, interaction_id)

    def find_request(self, request_id: str) -> Interaction | None:
        row = self._conn.execute(
            "SELECT * FROM interactions WHERE request_id = ?", (request_id,)
        ).fetchone()
        return None if row is None else Interaction.from_row(row)

    def judged_unused(self) -> list[Interaction]:
        """Interactions with a verdict that no round has trained on yet, oldest first."""
        rows = self._conn.execute(
            "SELECT * FROM interactions WHERE used_in_round IS NULL AND verdict IS NOT NULL "
            "ORDER BY id"
        ).fetchall()
        return [Interaction.from_row(r) for r in rows]

    def recent(self, limit: int = 50) -> list[Interaction]:
        rows = self._conn.execute(
            "SELECT * FROM interactions ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [Interaction.from_row(r) for r in rows]

    def count_waiting(self) -> int:
        """How many judged interactions no round has trained on yet (what the page shows)."""
        query = (
            "SELECT COUNT(*) FROM interactions WHERE used_in_round IS NULL AND verdict IS NOT NULL"
        )
        return int(self._conn.execute(query).fetchone()[0])

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM interactions").fetchone()[0])
