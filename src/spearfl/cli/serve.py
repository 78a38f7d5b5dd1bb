"""``spearfl serve --client-id N``: a device's feedback page, and the federation it feeds.

Three ways to run it:

- default (one machine): the page for client N, and the whole federation on Flower's
  simulation engine with ``feedback.provider: human``; each round waits until someone presses
  "Start next round" on the page (or ``--round-every`` seconds pass);
- ``--superlink HOST:PORT``: the page, and this device's SuperNode (``flower-supernode`` with
  ``partition-id=N`` and ``device-dir``) joining a real federation, with a ``spearfl worker``
  beside it that keeps the model loaded between rounds (``--no-worker``: every message's
  ClientApp process loads it, Flower's plain behaviour);
- ``--page-only``: just the page and its inbox (the SuperNode is started some other way).

Its folder is its own: ``<output_dir>-serve/client-N`` unless ``--output-dir`` says otherwise,
never the folder of a run made with ``spearfl run``; a folder holding a run is refused unless
``--resume`` (same settings) or ``--overwrite`` (moved aside). One Ctrl-C or SIGTERM stops the
page, the federation and Ray together.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from spearfl.cli.check import checked_before_work
from spearfl.cli.options import claim_run_folder, config_source, load_or_report, report_interrupt
from spearfl.config import Config
from spearfl.federation.interrupt import RunInterrupted, Signalled, stop_on_signals


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


def _supernode_command(
    args: argparse.Namespace, client_id: int, num_clients: int, device_dir, ticket=None
):
    exe = shutil.which("flower-supernode") or str(Path(sys.executable).parent / "flower-supernode")
    security = ["--root-certificates", args.root_certificates] if args.root_certificates else []
    items = f'partition-id={client_id} num-partitions={num_clients} device-dir="{device_dir}"'
    if ticket is not None:
        items += f' worker="{ticket}"'
    return [
        exe,
        *(security or ["--insecure"]),
        "--superlink",
        args.superlink,
        "--port",
        str(args.node_port),
        "--node-config",
        items,
    ]


def _supernode_env() -> dict[str, str]:
    """The SuperNode starts Flower's helper programs by name: this environment's come first."""
    here = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{here}{os.pathsep}{os.environ.get('PATH', '')}"}


def serve_folder(args: argparse.Namespace, cfg: Config) -> str:
    """The run folder: ``--output-dir``, else ``<output_dir>-serve/client-N`` (beside, never
    inside, the config's own run folder)."""
    if args.output_dir:
        return args.output_dir
    return str(Path(f"{cfg.output_dir}-serve") / f"client-{args.client_id}")


def _resume_command(args: argparse.Namespace, run_dir: Path) -> str:
    sets = "".join(f" --set {item}" for item in args.set or [])
    config = f" {args.config}" if args.config else ""
    return (
        f"spearfl serve{config} --client-id {args.client_id}{sets} --output-dir {run_dir} --resume"
    )


def _resume_refusal(run_dir: Path, cfg: Config) -> str | None:
    """Why ``--resume`` cannot continue the run in ``run_dir`` with ``cfg``, or None."""
    from spearfl.cli.resume import changed_settings
    from spearfl.reporting.run_folder import saved_config

    saved = saved_config(run_dir)
    if saved is None:
        return f"{run_dir} holds no run to resume (no readable config.yaml)"
    changed = changed_settings(saved, cfg)
    if changed:
        return f"--resume continues the same run; these settings differ: {', '.join(changed)}"
    return None


def _wait_until_stopped(stop: threading.Event, done: Callable[[], bool] = lambda: False) -> None:
    """Block until a signal sets ``stop`` (or ``done()``)."""
    try:
        while not stop.wait(0.5) and not done():
            pass
    except Signalled:
        pass


def run_serve(args: argparse.Namespace) -> int:
    found = load_or_report(*config_source(args, ["feedback.provider=human"]))
    if found is None:
        return 2
    cfg = load_or_report(
        *config_source(args, ["feedback.provider=human", f"output_dir={serve_folder(args, found)}"])
    )
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
    run_dir = Path(cfg.output_dir)
    simulated = not (args.page_only or args.superlink)
    if not simulated and (args.resume or args.overwrite):
        print(
            "spearfl: --resume and --overwrite are about the run folder of the federation serve "
            "runs on this machine; with --page-only or --superlink there is none",
            file=sys.stderr,
        )
        return 2
    if simulated and args.resume:
        from spearfl.reporting.run_folder import run_state

        refusal = _resume_refusal(run_dir, cfg)
        if refusal:
            print(f"spearfl: {refusal}", file=sys.stderr)
            return 2
        state = run_state(run_dir)
        if state.status == "complete":
            print(f"{run_dir} is {state.describe()}; nothing to do")
            return 0
    elif simulated and not claim_run_folder(
        run_dir, args.overwrite, _resume_command(args, run_dir)
    ):
        return 2

    stop = threading.Event()
    received: list[int] = []
    with stop_on_signals(stop, received, raise_in_main=True):
        try:
            return _serve(args, cfg, run_dir, simulated, stop)
        except Signalled as signalled:  # while loading, before the federation started
            print(f"spearfl: stopped by {signalled} before the federation started", file=sys.stderr)
            return 128 + signalled.signum


def _serve(
    args: argparse.Namespace, cfg: Config, run_dir: Path, simulated: bool, stop: threading.Event
) -> int:
    """The page in a thread of its own, and the main thread's job of the mode; the page is
    stopped whatever way that job ends."""
    from spearfl.feedback.store import FeedbackStore
    from spearfl.feedback_page.model import DeviceModel
    from spearfl.feedback_page.page import RoundTrigger, create_app

    client_id = args.client_id
    device_dir = Path(args.device_dir) if args.device_dir else cfg.device_dir(client_id)
    watch = [device_dir, run_dir] if simulated else [device_dir]
    device = DeviceModel(cfg, client_id, watch)
    store = FeedbackStore.for_device(device_dir)
    trigger = RoundTrigger() if simulated else None
    extra = (lambda: last_round_clients(run_dir)) if simulated else None
    server = _page_server(create_app(device, store, trigger, extra), args.host, args.port)
    url = f"http://{args.host}:{args.port}/"
    print(f"feedback page for client {client_id}: {url}  (inbox: {store.path})", flush=True)
    page = threading.Thread(target=server.run, name="feedback-page", daemon=True)
    page.start()
    try:
        if args.page_only:
            _wait_until_stopped(stop, lambda: not page.is_alive())
            return 0 if stop.is_set() else 1  # the page itself ended: it could not start
        if args.superlink:
            return _supernode(args, cfg, device_dir, stop)
        return _federate(args, cfg, run_dir, trigger, url, stop)
    finally:
        server.should_exit = True
        page.join(timeout=10)


def _worker_command(args: argparse.Namespace, ticket: Path) -> list[str]:
    """``spearfl worker`` with this command's config and settings (the model the page uses)."""
    sets = [item for s in [*(args.set or []), "feedback.provider=human"] for item in ("--set", s)]
    config = [args.config] if args.config else []
    ids = ["--client-id", str(args.client_id)]
    return [
        sys.executable,
        "-m",
        "spearfl.cli.main",
        "worker",
        "--ticket",
        str(ticket),
        *config,
        *sets,
        *ids,
    ]


def _stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start_worker(
    args: argparse.Namespace, device_dir: Path, stop: threading.Event
) -> tuple[subprocess.Popen, Path] | None:
    """The device's worker, once its ticket says it is ready; None if it ended first or a
    signal came (it is then stopped)."""
    from spearfl.federation.device_link import TICKET_FILE

    ticket = device_dir / TICKET_FILE
    ticket.unlink(missing_ok=True)  # a ticket left by a worker that was killed
    worker = subprocess.Popen(_worker_command(args, ticket))
    print(f"loading the model in the device worker (pid {worker.pid})...", flush=True)
    _wait_until_stopped(stop, lambda: ticket.is_file() or worker.poll() is not None)
    if ticket.is_file() and worker.poll() is None and not stop.is_set():
        return worker, ticket
    _stop_process(worker)
    if not stop.is_set():
        print(
            f"spearfl: the device worker exited ({worker.returncode}) before it was ready",
            file=sys.stderr,
        )
    return None


def _supernode(
    args: argparse.Namespace, cfg: Config, device_dir: Path, stop: threading.Event
) -> int:
    """This device's SuperNode (and its worker), until it ends or a signal stops it (and then
    both are stopped)."""
    worker, ticket = None, None
    if not args.no_worker:
        started = _start_worker(args, device_dir, stop)
        if started is None:
            return 0 if stop.is_set() else 1
        worker, ticket = started

    def worker_ended() -> bool:
        return worker is not None and worker.poll() is not None

    try:
        node = subprocess.Popen(
            _supernode_command(args, args.client_id, cfg.data.num_clients, device_dir, ticket),
            env=_supernode_env(),
        )
        try:
            _wait_until_stopped(stop, lambda: node.poll() is not None or worker_ended())
            lost_worker = worker_ended() and node.poll() is None
        finally:
            _stop_process(node)
    finally:
        if worker is not None:
            _stop_process(worker)
    if stop.is_set():
        return 0
    if lost_worker:
        print(
            f"spearfl: the device worker exited ({worker.returncode}); the SuperNode is "
            "stopped too",
            file=sys.stderr,
        )
        return 1
    return int(node.returncode)


def _federate(
    args: argparse.Namespace,
    cfg: Config,
    run_dir: Path,
    trigger,
    url: str,
    stop: threading.Event,
) -> int:
    """The whole federation on the simulation engine, a round each time the page asks (or
    every ``--round-every`` seconds); then the page stays up until a signal."""
    from spearfl.cli.progress import RichObserver
    from spearfl.federation.simulation import simulate

    def before_round(round_num: int) -> None:
        print(f"round {round_num}: waiting for 'Start next round' on {url}", flush=True)
        started = time.monotonic()
        while not stop.is_set():
            if trigger.wait(timeout=0.5):
                return
            if args.round_every and time.monotonic() - started >= args.round_every:
                return

    observer = RichObserver(cfg.fl.rounds)
    try:
        simulate(cfg, run_dir, observer, resume=args.resume, before_round=before_round, stop=stop)
    except RunInterrupted as stopped:
        observer.close()
        return report_interrupt(stopped, _resume_command(args, run_dir))
    finally:
        observer.close()
    print(f"all {cfg.fl.rounds} rounds done; the page stays up at {url} (Ctrl-C to stop)")
    _wait_until_stopped(stop)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve", help="a device's feedback page (and the federation it trains, on one machine)"
    )
    serve.add_argument("config", nargs="?", help="YAML config (default: the embedded demo)")
    serve.add_argument("--client-id", type=int, required=True, help="which client this device is")
    serve.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    serve.add_argument("--output-dir", help="run folder (default: <output_dir>-serve/client-N)")
    serve.add_argument("--host", default="127.0.0.1", help="address the page binds to")
    serve.add_argument("--port", type=int, default=8600)
    serve.add_argument("--device-dir", help="the device's folder (default: config's store_dir)")
    serve.add_argument(
        "--round-every",
        type=float,
        metavar="SECONDS",
        help="start rounds by themselves this often (default: only from the page)",
    )
    folder = serve.add_mutually_exclusive_group()
    folder.add_argument(
        "--resume", action="store_true", help="continue the run in the folder (same settings)"
    )
    folder.add_argument(
        "--overwrite",
        action="store_true",
        help="move a run already in the folder aside (to DIR.old-<time>) and start afresh",
    )
    mode = serve.add_mutually_exclusive_group()
    mode.add_argument("--page-only", action="store_true", help="only the page and its inbox")
    mode.add_argument("--superlink", metavar="HOST:PORT", help="join a real federation")
    serve.add_argument("--root-certificates", help="CA certificate for a TLS SuperLink")
    serve.add_argument(
        "--node-port", type=int, default=9094, help="the SuperNode's local port (--superlink)"
    )
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="--superlink without a device worker: each of Flower's per-message ClientApp "
        "processes loads the model itself",
    )
    serve.set_defaults(func=run_serve)
