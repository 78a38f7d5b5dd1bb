"""The device's long-lived worker: the model loaded once, train messages served one at a time.

Each request is a train message a ClientApp process forwarded (``device_link``); the worker
runs the very ClientApp ``train`` on it, in this process, so the update, its metrics and the
caches of ``federation.worker`` are those of the in-process path. The listener binds to
127.0.0.1 only and accepts a connection only with the ticket's key (HMAC challenge).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
import traceback
from multiprocessing import AuthenticationError
from multiprocessing.connection import Listener
from pathlib import Path
from typing import Any

from spearfl.config import Config
from spearfl.federation.device_link import (
    Ticket,
    message_of,
    plain_records,
    remove_ticket,
    write_ticket,
)

log = logging.getLogger(__name__)


def warm_up(cfg: Config, client_id: int | None = None, data_path: str | None = None) -> None:
    """Load what the first round would: the base model, and the task data (the client's own
    examples when ``client_id`` is given)."""
    from spearfl.federation.worker import ClientWorker, shared_policy, shared_task_data
    from spearfl.hub import apply_hf_settings

    apply_hf_settings(cfg.hf)
    if client_id is not None:
        ClientWorker.for_client(cfg, client_id, data_path)
    else:
        shared_policy(cfg)
        if not data_path:
            shared_task_data(cfg)


def handle(request: dict[str, Any]) -> tuple[str, Any]:
    """Run one forwarded train message; ``("ok", reply content)`` or ``("error", why)``."""
    from flwr.app import Context, RecordDict

    from spearfl.federation import client_app

    received = time.time()
    try:
        msg = message_of(request)
        context = Context(0, 0, request["node_config"], RecordDict(), {})
        reply = client_app.train(msg, context)
        content = plain_records(reply.content)
    except Exception as err:  # the ClientApp reports it as this client's failure
        log.warning("train request failed:\n%s", traceback.format_exc())
        return "error", f"{type(err).__name__}: {err}"
    metrics = content[client_app.METRICS][1]
    # Its loading cost as the node sees it: the hand-over from the ClientApp included.
    metrics["client_ready_seconds"] += max(0.0, received - float(request["arrived"]))
    return "ok", content


def serve(ticket_path: Path) -> None:
    """Accept requests until a signal (the caller's handler raises) or an error ends it; the
    ticket exists exactly while requests are accepted."""
    authkey = secrets.token_bytes(32)
    pid = os.getpid()
    with Listener(("127.0.0.1", 0), authkey=authkey) as listener:
        host, port = listener.address
        write_ticket(ticket_path, Ticket(host, port, authkey, pid))
        try:
            while True:
                try:
                    conn = listener.accept()
                except AuthenticationError as err:
                    log.warning("refused a connection without the ticket's key: %s", err)
                    continue
                with conn:
                    try:
                        request = conn.recv()
                    except (EOFError, OSError):
                        continue  # the ClientApp process went away
                    reply = handle(request)
                    try:
                        conn.send(reply)
                    except OSError as err:
                        log.warning("the ClientApp left before the reply: %s", err)
        finally:
            remove_ticket(ticket_path, pid)
