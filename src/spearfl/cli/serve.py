"""``spearfl serve --client-id N``: a device's feedback page, and the federation it feeds.

Three ways to run it:

- default (one machine): the page for client N, and the whole federation on Flower's
  simulation engine with ``feedback.provider: human``; each round waits until someone presses
  "Start next round" on the page (or ``--round-every`` seconds pass);
- ``--superlink HOST:PORT``: the page, and this device's SuperNode (``flower-supernode`` with
  ``partition-id=N`` and ``device-dir``) joining a real federation;
- ``--page-only``: just the page and its inbox (the SuperNode is started some other way).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from spearfl.cli.check import checked_before_work
from spearfl.cli.options import config_source, load_or_report


def last_round_clients(run_dir: Path) -> dict:
    """Which clients the latest finished round drew (the page tells its person whether their
    device took part)."""
    from spearfl.reporting.history import HISTORY_FILE, read_history

    if not (run_dir / HISTORY_FILE).is_file():
        return {}
    rounds = [e for e in read_history(run_dir) if int(e["round"]) > 0]
    if not rounds:
        return {}
    last = rounds[-1]
    return {"last_round": int(last["round"]), "last_round_clients": list(last["clients"])}


def _page_server(app, host: str, port: int):
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))


def _supernode_command(args: argparse.Namespace, client_id: int, num_clients: int, device_dir):
    exe = shutil.which("flower-supernode") or str(Path(sys.executable).parent / "flower-supernode")
    security = ["--root-certificates", args.root_certificates] if args.root_certificates else []
    return [
        exe,
        *(security or ["--insecure"]),
        "--superlink",
        args.superlink,
        "--port",
        str(args.node_port),
        "--node-config",
        f'partition-id={client_id} num-partitions={num_clients} device-dir="{device_dir}"',
    ]


def _supernode_env() -> dict[str, str]:
    """The SuperNode starts Flower's helper programs by name: this environment's come first."""
    here = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{here}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_serve(args: argparse.Namespace) -> int:
    cfg = load_or_report(*config_source(args, ["feedback.provider=human"]))
    if cfg is None or checked_before_work(cfg, args.debug) is None:
        return 2
    client_id = args.client_id
    if not 0 <= client_id < cfg.data.num_clients:
        print(
            f"spearfl: --client-id {client_id} outside 0..{cfg.data.num_clients - 1} "
            f"(data.num_clients = {cfg.data.num_clients})",
            file=sys.stderr,
        )
        return 2

    from spearfl.device.model import DeviceModel
    from spearfl.device.page import RoundTrigger, create_app
    from spearfl.feedback.store import FeedbackStore

    run_dir = Path(cfg.output_dir)
    device_dir = Path(args.device_dir) if args.device_dir else cfg.device_dir(client_id)
    simulated = not (args.page_only or args.superlink)
    watch = [device_dir, run_dir] if simulated else [device_dir]
    device = DeviceModel(cfg, client_id, watch)
    store = FeedbackStore.for_device(device_dir)
    trigger = RoundTrigger() if simulated else None
    extra = (lambda: last_round_clients(run_dir)) if simulated else None
    server = _page_server(create_app(device, store, trigger, extra), args.host, args.port)
    url = f"http://{args.host}:{args.port}/"
    print(f"feedback page for client {client_id}: {url}  (inbox: {store.path})", flush=True)
    if args.page_only:
        server.run()
        return 0

    page = threading.Thread(target=server.run, name="feedback-page", daemon=True)
    page.start()
    if args.superlink:
        node = subprocess.Popen(
            _supernode_command(args, client_id, cfg.data.num_clients, device_dir),
            env=_supernode_env(),
        )
        try:
            return node.wait()
        except KeyboardInterrupt:
            node.terminate()
            return node.wait()

    from spearfl.cli.progress import RichObserver
    from spearfl.federation.simulation import simulate

    def before_round(round_num: int) -> None:
        print(f"round {round_num}: waiting for 'Start next round' on {url}", flush=True)
        while not trigger.wait(timeout=args.round_every):
            if args.round_every:
                break

    observer = RichObserver(cfg.fl.rounds)
    try:
        simulate(cfg, run_dir, observer, resume=args.resume, before_round=before_round)
    finally:
        observer.close()
    print(f"all {cfg.fl.rounds} rounds done; the page stays up at {url} (Ctrl-C to stop)")
    try:
        page.join()
    except KeyboardInterrupt:
        pass
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve", help="a device's feedback page (and the federation it trains, on one machine)"
    )
    serve.add_argument("config", nargs="?", help="YAML config (default: the embedded demo)")
    serve.add_argument("--client-id", type=int, required=True, help="which client this device is")
    serve.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    serve.add_argument("--output-dir", help="run directory (overrides output_dir)")
    serve.add_argument("--host", default="127.0.0.1", help="address the page binds to")
    serve.add_argument("--port", type=int, default=8600)
    serve.add_argument("--device-dir", help="the device's folder (default: config's store_dir)")
    serve.add_argument(
        "--round-every",
        type=float,
        metavar="SECONDS",
        help="start rounds by themselves this often (default: only from the page)",
    )
    serve.add_argument("--resume", action="store_true", help="continue the run in output_dir")
    mode = serve.add_mutually_exclusive_group()
    mode.add_argument("--page-only", action="store_true", help="only the page and its inbox")
    mode.add_argument("--superlink", metavar="HOST:PORT", help="join a real federation")
    serve.add_argument("--root-certificates", help="CA certificate for a TLS SuperLink")
    serve.add_argument(
        "--node-port", type=int, default=9094, help="the SuperNode's local port (--superlink)"
    )
    serve.set_defaults(func=run_serve)
