"""How a ClientApp hands its train message to the device's long-lived worker, and back.

Flower 1.42's deployment engine starts a fresh ClientApp process for every message, so a
ClientApp that trained in-process would load torch and the base model again each round. A
``spearfl worker`` process keeps them loaded; the ClientApp only forwards the message to it over
``multiprocessing.connection`` (HMAC-authenticated with the key in the worker's ticket) and
returns its reply. Nothing here imports torch, so that per-message process stays cheap.

The ticket is a JSON file, readable only by its owner (mode 0600): the worker's address, key and
pid. The worker writes it once it is ready to train and removes it when it stops.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict

WORKER_KEY = "worker"
"""The node-config key naming the ticket, e.g. ``--node-config 'worker="/dev0/worker.ticket"'``."""
TICKET_FILE = "worker.ticket"
"""The ticket's name in a device's folder (``spearfl serve --superlink`` puts it there)."""


class WorkerUnavailable(RuntimeError):
    """The ticket is missing or stale, or the worker behind it died or failed."""


@dataclass(frozen=True)
class Ticket:
    host: str
    port: int
    authkey: bytes
    pid: int

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


def write_ticket(path: Path, ticket: Ticket) -> None:
    """Write atomically (temporary file, then rename) with mode 0600, so a reader sees either
    no ticket or a whole one, and only its owner can read the key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "host": ticket.host,
        "port": ticket.port,
        "authkey": ticket.authkey.hex(),
        "pid": ticket.pid,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(body, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_ticket(path: Path) -> Ticket:
    body = json.loads(path.read_text())
    return Ticket(
        str(body["host"]), int(body["port"]), bytes.fromhex(body["authkey"]), int(body["pid"])
    )


def remove_ticket(path: Path, pid: int) -> None:
    """Remove the ticket if it is still this worker's (a newer worker may have replaced it)."""
    try:
        if read_ticket(path).pid == pid:
            path.unlink()
    except (OSError, ValueError, KeyError):
        pass


def _restart_hint(path: Path) -> str:
    return (
        f"start it with `spearfl worker --ticket {path} CONFIG` (`spearfl serve --superlink` "
        "starts one itself), or leave worker= out of the SuperNode's --node-config to load the "
        "model in every ClientApp process"
    )


def plain_records(content: RecordDict) -> dict[str, tuple[str, dict[str, Any]]]:
    """A RecordDict as plain Python and numpy values (what crosses the connection)."""
    plain: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            plain[name] = ("arrays", {k: a.numpy() for k, a in record.items()})
        elif isinstance(record, MetricRecord):
            plain[name] = ("metrics", dict(record))
        elif isinstance(record, ConfigRecord):
            plain[name] = ("config", dict(record))
        else:
            raise TypeError(f"record {name!r} is a {type(record).__name__}")
    return plain


def records_from_plain(plain: dict[str, tuple[str, dict[str, Any]]]) -> RecordDict:
    """The inverse of ``plain_records`` (array keys and order kept)."""
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {}
    for name, (kind, values) in plain.items():
        if kind == "arrays":
            records[name] = ArrayRecord({k: Array(v) for k, v in values.items()})
        elif kind == "metrics":
            records[name] = MetricRecord(values)
        else:
            records[name] = ConfigRecord(values)
    return RecordDict(records)


_METADATA = (
    "run_id",
    "message_id",
    "src_node_id",
    "dst_node_id",
    "reply_to_message_id",
    "group_id",
    "created_at",
    "ttl",
    "message_type",
)


def message_request(msg: Message, node_config: dict[str, Any]) -> dict[str, Any]:
    """What the worker needs to run the message as this node would: its content and metadata,
    the node config (without ``worker``) and when the ClientApp received it."""
    return {
        "metadata": {k: getattr(msg.metadata, k) for k in _METADATA},
        "content": plain_records(msg.content),
        "node_config": {k: v for k, v in node_config.items() if k != WORKER_KEY},
        "arrived": time.time(),
    }


def message_of(request: dict[str, Any]) -> Message:
    """The train message a request carries, as the ClientApp received it."""
    return Message(
        content=records_from_plain(request["content"]), metadata=Metadata(**request["metadata"])
    )


def delegate_train(msg: Message, node_config: dict[str, Any], path: Path) -> Message:
    """Send ``msg`` to the worker of the ticket at ``path`` and return its reply to ``msg``.

    ``client_seconds`` in the reply is this process's time, the worker round trip included."""
    started = time.perf_counter()
    if not path.is_file():
        raise WorkerUnavailable(
            f"no device worker: the ticket {path} does not exist; {_restart_hint(path)}"
        )
    try:
        ticket = read_ticket(path)
    except (OSError, ValueError, KeyError) as err:
        raise WorkerUnavailable(
            f"the ticket {path} is unreadable ({err}); {_restart_hint(path)}"
        ) from None
    request = message_request(msg, node_config)
    try:
        with Client(ticket.address, authkey=ticket.authkey) as conn:
            conn.send(request)
            status, body = conn.recv()
    except AuthenticationError:
        raise WorkerUnavailable(
            f"the process at {ticket.host}:{ticket.port} refused the key of "
            f"{path}: the ticket is stale; {_restart_hint(path)}"
        ) from None
    except (OSError, EOFError) as err:
        raise WorkerUnavailable(
            f"the device worker of {path} (pid {ticket.pid}) did not answer "
            f"({type(err).__name__}: {err}); it has stopped or died: {_restart_hint(path)}"
        ) from None
    if status != "ok":
        raise WorkerUnavailable(f"the device worker of {path} (pid {ticket.pid}) failed: {body}")
    content = records_from_plain(body)
    for record in content.values():
        if isinstance(record, MetricRecord) and "client_seconds" in record:
            record["client_seconds"] = time.perf_counter() - started
    return Message(content, reply_to=msg)
