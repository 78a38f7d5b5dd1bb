"""Stopping a run on Ctrl-C or SIGTERM without committing the round in flight.

Flower's simulation runs the ServerApp in a thread of its own while the main thread drives the
Ray actors. Python delivers a signal to the main thread only, so on its own a Ctrl-C shut Ray
down while the server thread, unaware, kept waiting for replies, aggregated whatever arrived
and evaluated, and the process could not exit before that thread did. Here the signal sets a
``threading.Event`` first (the server checks it before it commits anything) and only then
unwinds the main thread, which shuts Ray down.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(Exception):
    """The run was asked to stop before it finished; its checkpoint holds the last complete
    round, so ``spearfl run --resume RUN_DIR`` continues it."""

    def __init__(self, run_dir: Path, last_round: int | None, signum: int | None = None):
        self.run_dir = Path(run_dir)
        self.last_round = last_round
        self.signum = signum
        super().__init__(self.line())

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process a signal stopped."""
        return 128 + int(self.signum or signal.SIGINT)

    def line(self, resume: str | None = None) -> str:
        """The one line a person reads: what stopped, where the run stands, how to go on."""
        name = signal.Signals(self.signum).name if self.signum else "a stop request"
        where = (
            f"after round {self.last_round}"
            if self.last_round is not None
            else "before its first round"
        )
        how = resume or f"spearfl run --resume {self.run_dir}"
        return f"interrupted by {name}: {self.run_dir} stopped {where}; resume with: {how}"


class Signalled(BaseException):
    """Raised in the main thread by the handler below. A BaseException, so that Flower's
    ``except Exception`` blocks let it through to their ``finally`` (which shut Ray down)
    instead of logging it as a crash."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def install_handlers(stop: threading.Event, received: list[int], raise_in_main: bool) -> None:
    """SIGINT/SIGTERM set ``stop`` and append the signal to ``received``; the first one also
    raises ``Signalled`` in the main thread when ``raise_in_main``. Later signals only record
    (a second Ctrl-C does not cut the clean-up short). Call again after a library replaced a
    handler (``ray.init`` replaces SIGTERM's). Outside the main thread, where Python cannot
    install handlers, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: Any) -> None:
        first = not stop.is_set()
        stop.set()
        received.append(signum)
        if first and raise_in_main:
            raise Signalled(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)


@contextmanager
def stop_on_signals(
    stop: threading.Event, received: list[int], raise_in_main: bool = False
) -> Iterator[None]:
    """``install_handlers`` for the duration of the block; the previous handlers come back
    on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    install_handlers(stop, received, raise_in_main)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
