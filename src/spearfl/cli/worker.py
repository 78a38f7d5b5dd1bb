"""``spearfl worker --ticket PATH [CONFIG]``: a device's model, loaded once, beside its SuperNode.

Flower 1.42's SuperNode starts a new ClientApp process for every message; with
``worker="PATH"`` in the SuperNode's node config that process forwards its train message here
instead of loading torch and the model itself. The worker loads the model (and the task data)
of CONFIG first and writes the ticket only then, so a ticket on disk means "ready"; SIGTERM or
Ctrl-C stops it and removes the ticket.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from spearfl.cli.options import config_source, load_or_report
from spearfl.federation.interrupt import Signalled, stop_on_signals


def run_worker(args: argparse.Namespace) -> int:
    cfg = load_or_report(*config_source(args))
    if cfg is None:
        return 2
    if args.client_id is not None and not 0 <= args.client_id < cfg.data.num_clients:
        print(
            f"spearfl: --client-id {args.client_id} outside 0..{cfg.data.num_clients - 1}",
            file=sys.stderr,
        )
        return 2
    ticket = Path(args.ticket).resolve()
    stop = threading.Event()
    received: list[int] = []
    with stop_on_signals(stop, received, raise_in_main=True):
        try:
            from spearfl.federation.device_worker import serve, warm_up

            warm_up(cfg, args.client_id, args.data_path)
            print(f"device worker ready: pid {os.getpid()}, ticket {ticket}", flush=True)
            serve(ticket)
        except Signalled as signalled:
            print(f"device worker stopped by {signalled}", flush=True)
            return 0
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser(
        "worker", help="a device's model loaded once, serving its SuperNode's train messages"
    )
    worker.add_argument("config", nargs="?", help="YAML config (default: the embedded demo)")
    worker.add_argument("--ticket", required=True, help="where to write the ticket (mode 0600)")
    worker.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    worker.add_argument(
        "--client-id", type=int, help="load this client's examples too before the ticket"
    )
    worker.add_argument("--data-path", help="the device's own data file (as node config's)")
    worker.set_defaults(func=run_worker, output_dir=None)
