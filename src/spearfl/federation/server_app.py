"""The Flower ServerApp: the round loop of ``server.py`` driven through Flower's Grid.

A ``query`` round at start-up maps client ids to the node ids of the SuperNodes serving them;
train messages carry the global adapter, the round and the run's configuration. ``app`` is the
ServerApp ``flwr run`` starts on the deployment engine (``[tool.flwr.app.components]``);
``build_server_app`` binds one to configs for the simulation engine (``spearfl run``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from spearfl.config import Config, ConfigError, load_config
from spearfl.federation.client_app import ADAPTER, CONFIG, METRICS
from spearfl.federation.server import (
    Delivery,
    Failure,
    FederatedServer,
    Reply,
    RoundObserver,
    SendRound,
)
from spearfl.federation.worker import forget_policy
from spearfl.hub import apply_hf_settings
from spearfl.presets import default_config_path
from spearfl.reporting.live import reporting_to

log = logging.getLogger(__name__)


def _stopped(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()


def map_clients(
    grid: Grid, expected: int, timeout: float = 600.0, stop: threading.Event | None = None
) -> dict[int, int]:
    """Ask every node which client id it serves: ``{client_id: node_id}`` (what is known so far
    when ``stop`` is set)."""
    deadline = time.monotonic() + timeout
    mapping: dict[int, int] = {}
    while time.monotonic() < deadline and not _stopped(stop):
        node_ids = list(grid.get_node_ids())
        unknown = [n for n in node_ids if n not in mapping.values()]
        if unknown:
            messages = [
                Message(RecordDict({}), dst_node_id=n, message_type=MessageType.QUERY)
                for n in unknown
            ]
            for reply in grid.send_and_receive(messages, timeout=60):
                if reply.has_error():
                    continue
                cid = int(reply.content[CONFIG]["client_id"])
                mapping[cid] = reply.metadata.src_node_id
        if len(mapping) >= expected:
            return mapping
        time.sleep(1.0)
    if _stopped(stop):
        return mapping
    raise RuntimeError(f"only {len(mapping)} of {expected} clients connected within {timeout:.0f}s")


def grid_sender(
    grid: Grid, cfg: Config, observer: RoundObserver, stop: threading.Event | None = None
) -> SendRound:
    """A ``send`` function that delivers train messages through a Flower Grid.

    A client whose node is no longer online, a reply carrying an error (the ClientApp raised, or
    Flower reports the node gone: the SuperLink notices a missing heartbeat after 40-60 s) and a
    reply that has not arrived by ``fl.round_timeout`` seconds count as failures of that client.
    Once ``stop`` is set it stops waiting and returns an empty delivery (the server, checking
    the same event, drops the round).
    """
    mapping = map_clients(grid, cfg.data.num_clients, stop=stop)
    cfg_json = cfg.to_json()

    def send(round_num: int, clients: list[int], adapter: dict[str, torch.Tensor]) -> Delivery:
        delivery = Delivery()
        if _stopped(stop):
            return delivery
        online = set(grid.get_node_ids())
        for cid in [c for c in clients if mapping[c] not in online]:
            delivery.failures.append(Failure(cid, f"node {mapping[cid]} is offline"))
        clients = [c for c in clients if mapping[c] in online]
        record = ArrayRecord({k: v.contiguous() for k, v in adapter.items()})
        messages = [
            Message(
                _train_content(record, cfg_json, round_num),
                dst_node_id=mapping[c],
                message_type=MessageType.TRAIN,
            )
            for c in clients
        ]
        answered: set[int] = set()
        for index, msg in _gather(grid, messages, cfg.fl.round_timeout, stop):
            # By the message it answers: an error the SuperLink writes for a lost node comes
            # from the SuperLink's own node id, not the client's.
            cid = clients[index]
            answered.add(cid)
            reply = _read_reply(cid, msg)
            if isinstance(reply, Failure):
                delivery.failures.append(reply)
                continue
            observer.client_done(round_num, cid, reply.metrics)
            delivery.replies.append(reply)
        if _stopped(stop):
            return Delivery()
        for cid in clients:
            if cid not in answered:
                delivery.failures.append(
                    Failure(cid, f"no reply within fl.round_timeout = {cfg.fl.round_timeout:g} s")
                )
        return delivery

    return send


def _train_content(adapter: ArrayRecord, cfg_json: str, round_num: int) -> RecordDict:
    """A train message's content: the global adapter, the run's configuration, the round."""
    return RecordDict(
        {ADAPTER: adapter, CONFIG: ConfigRecord({"json": cfg_json, "round": round_num})}
    )


def _read_reply(client_id: int, msg: Message) -> Reply | Failure:
    """The client's update from its reply, or the failure the reply reports or makes."""
    if msg.has_error():
        return Failure(client_id, f"error: {msg.error.reason}")
    try:
        metrics = dict(msg.content[METRICS])
        adapter_state = dict(msg.content[ADAPTER].to_torch_state_dict())
    except (KeyError, TypeError, ValueError) as err:
        return Failure(client_id, f"malformed reply: {err}")
    return Reply(client_id, adapter_state, metrics)


def _gather(
    grid: Grid, messages: list[Message], timeout: float, stop: threading.Event | None = None
) -> Iterable[tuple[int, Message]]:
    """Push all messages, then yield ``(index of the message answered, reply)`` as replies
    arrive (for live progress) until every message is answered, ``timeout`` seconds pass or
    ``stop`` is set."""
    if not messages:
        return
    deadline = time.monotonic() + timeout
    ids = list(grid.push_messages(messages))
    index_of = {message_id: i for i, message_id in enumerate(ids)}
    pending = set(ids)
    while pending and time.monotonic() < deadline and not _stopped(stop):
        got = list(grid.pull_messages(list(pending)))
        for msg in got:
            answered = msg.metadata.reply_to_message_id
            if answered in pending:
                pending.discard(answered)
                yield index_of[answered], msg
        if not got:
            time.sleep(0.2)


def build_server_app(
    runs: Sequence[tuple[Config, Path]],
    observer: RoundObserver | None = None,
    results: Sequence[dict] | None = None,
    resume: bool = False,
    before_round: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    threads: list[threading.Thread] | None = None,
) -> ServerApp:
    """A ServerApp that runs each ``(config, run directory)`` in turn on the same Grid (used by
    ``spearfl run``); ``results[i]`` receives run ``i``'s summary.

    ``stop`` reaches the round loop; ``threads`` receives the thread Flower runs the ServerApp
    in, so the caller can wait for it after an interrupt."""
    app = ServerApp()
    obs = observer or RoundObserver()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if threads is not None:
            threads.append(threading.current_thread())
        for index, (cfg, run_dir) in enumerate(runs):
            if stop is not None and stop.is_set():
                return
            if index:
                forget_policy()  # each run starts from its own freshly initialised adapter
            with reporting_to(cfg, run_dir, obs) as observer:
                server = FederatedServer(cfg, run_dir, observer, stop)
                sender = grid_sender(grid, cfg, observer, stop)
                summary = server.run(sender, resume=resume, before_round=before_round)
            if results is not None:
                results[index].update(summary)

    return app


# ------------------------------------------------------ the deployment engine
RUN_CONFIG_DEFAULTS: dict[str, Any] = {
    "config": "",
    "run-dir": "",
    "resume": False,
    "overrides": "",
}
"""``[tool.flwr.app.config]``: what ``flwr run --run-config`` may set."""


def settings_from_run_config(run_config: Mapping[str, Any]) -> tuple[Config, Path, bool]:
    """The run's config, run directory and resume flag from Flower's run config.

    ``config``: a YAML path on the server's machine ('' = the embedded demo); ``run-dir``:
    where the run directory goes ('' = the config's ``output_dir``); ``resume``: continue the
    run in ``run-dir`` from its checkpoint, with the config saved there; ``overrides``:
    ``section.key=value`` items separated by ``;``.
    """
    unknown = sorted(set(run_config) - set(RUN_CONFIG_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"unknown run-config key {unknown[0]!r}; known: {', '.join(RUN_CONFIG_DEFAULTS)}",
            None,
            "flwr run --run-config",
        )
    settings = {**RUN_CONFIG_DEFAULTS, **run_config}
    overrides = [o.strip() for o in str(settings["overrides"]).split(";") if o.strip()]
    run_dir = str(settings["run-dir"]).strip()
    resume = bool(settings["resume"])
    if resume:
        if not run_dir:
            raise ConfigError("resume=true needs run-dir", None, "flwr run --run-config")
        path = Path(run_dir) / "config.yaml"
    else:
        path = Path(str(settings["config"])) if settings["config"] else default_config_path()
    if run_dir:
        overrides.append(f"output_dir={run_dir}")
    cfg = load_config(path, overrides)
    return cfg, Path(cfg.output_dir), resume


class LogObserver(RoundObserver):
    """Progress as log lines: a ServerApp under the deployment engine has no terminal."""

    def round_started(self, round_num: int, clients: list[int]) -> None:
        log.warning("round %d: clients %s", round_num, clients)

    def client_failed(self, round_num: int, client_id: int, reason: str) -> None:
        log.warning("round %d: client %d dropped: %s", round_num, client_id, reason)

    def round_done(self, entry: dict[str, Any]) -> None:
        acc = (entry.get("eval") or {}).get("accuracy")
        shown = "-" if acc is None else f"{acc:.3f}"
        log.warning(
            "round %d done: clients %s, eval accuracy %s", entry["round"], entry["clients"], shown
        )


app = ServerApp()
"""The ServerApp ``flwr run`` starts (``[tool.flwr.app.components]`` in pyproject.toml)."""


@app.main()
def deployment_main(grid: Grid, context: Context) -> None:
    cfg, run_dir, resume = settings_from_run_config(dict(context.run_config))
    apply_hf_settings(cfg.hf)
    with reporting_to(cfg, run_dir, LogObserver()) as observer:
        summary = FederatedServer(cfg, run_dir, observer).run(
            grid_sender(grid, cfg, observer), resume=resume
        )
    log.warning("run finished: %s", json.dumps(summary, indent=2))
