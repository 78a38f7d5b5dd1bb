"""A real Flower federation on 127.0.0.1 for tests: one SuperLink, N SuperNodes, the ``flwr`` CLI.

Every process gets its own ``FLWR_HOME`` under the test's folder and free ports, so tests do
not touch ``~/.flwr`` or each other. Processes are started as separate process trees and
killed (SIGKILL, whole tree) on exit. With ``worker_config`` each SuperNode has a
``spearfl worker`` beside it (as ``spearfl serve --superlink`` starts one), except the nodes in
``no_worker``, whose per-message ClientApp processes load the model themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from helpers import kill_tree

BIN = Path(sys.executable).parent
CONNECTION = "test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_tls_files(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost, made offline with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = folder / "ca.key", folder / "ca.crt"
    key, csr, crt = folder / "server.key", folder / "server.csr", folder / "server.pem"
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run("genrsa", "-out", str(ca_key), "2048")
    run("req", "-x509", "-new", "-key", str(ca_key), "-sha256", "-days", "2",
        "-subj", "/CN=spearfl-test-ca", "-out", str(ca_crt))  # fmt: skip
    run("genrsa", "-out", str(key), "2048")
    run("req", "-new", "-key", str(key), "-subj", "/CN=localhost", "-out", str(csr))
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-sha256", "-extfile", str(ext),
        "-out", str(crt))  # fmt: skip
    return {"ca": ca_crt, "cert": crt, "key": key}


@dataclass
class LocalFederation:
    root: Path
    num_nodes: int
    tls: dict[str, Path] | None = None
    node_config: dict[int, str] = field(default_factory=dict)
    """Extra ``--node-config`` items per node, e.g. ``data-path="/x.jsonl"``."""
    external: dict[int, Callable[[LocalFederation], subprocess.Popen]] = field(default_factory=dict)
    """Nodes the test starts itself (e.g. ``spearfl serve --superlink``), by client id."""
    worker_config: Path | None = None
    """The experiment's YAML: each node's ``spearfl worker`` loads its model and data."""
    no_worker: set[int] = field(default_factory=set)
    """Nodes on Flower's plain path (no worker) even with ``worker_config``."""
    link_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def env(self, name: str) -> dict[str, str]:
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        return {
            **os.environ,
            "FLWR_HOME": str(home),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            # A simulation earlier in this process quiets Flower (ERROR); these logs are read.
            "FLWR_LOG_LEVEL": "INFO",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            args, env=self.env(name), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def security(self, server: bool) -> list[str]:
        if self.tls is None:
            return ["--insecure"]
        if server:
            t = self.tls
            return ["--ssl-ca-certfile", str(t["ca"]), "--ssl-certfile", str(t["cert"]),
                    "--ssl-keyfile", str(t["key"])]  # fmt: skip
        return ["--root-certificates", str(self.tls["ca"])]

    def ticket(self, i: int) -> Path:
        return self.root / f"worker{i}" / "worker.ticket"

    def has_worker(self, i: int) -> bool:
        return self.worker_config is not None and i not in self.no_worker and i not in self.external

    def start_worker(self, i: int) -> None:
        self._spawn(
            f"worker{i}",
            [sys.executable, "-m", "spearfl.cli.main", "worker", "--ticket", str(self.ticket(i)),
             str(self.worker_config), "--client-id", str(i)],
        )  # fmt: skip

    def wait_for_worker(self, i: int, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ticket(i).is_file():
            proc = self.procs[f"worker{i}"]
            if proc.poll() is not None:
                raise RuntimeError(f"worker{i} exited: {self.log(f'worker{i}')[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker{i} not ready: {self.log(f'worker{i}')[-2000:]}")
            time.sleep(0.2)

    def start_node(self, i: int) -> None:
        items = f"partition-id={i} num-partitions={self.num_nodes} {self.node_config.get(i, '')}"
        if self.has_worker(i):
            items += f' worker="{self.ticket(i)}"'
        self._spawn(
            f"supernode{i}",
            [
                str(BIN / "flower-supernode"),
                *self.security(False),
                "--superlink",
                f"127.0.0.1:{self.link_port}",
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
                "--node-config",
                items.strip(),
            ],  # fmt: skip
        )

    def start(self, timeout: float = 180.0) -> LocalFederation:
        self.root.mkdir(parents=True, exist_ok=True)
        self._spawn(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                *self.security(True),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.link_port),
                "--database",
                str(self.root / "superlink" / "state.db"),
                "--disable-runtime-dependency-installation",
            ],  # fmt: skip
        )
        self.write_cli_config()
        workers = [i for i in range(self.num_nodes) if self.has_worker(i)]
        for i in workers:  # all loading at once
            self.start_worker(i)
        for i in workers:
            self.wait_for_worker(i, timeout)
        for i in range(self.num_nodes):
            if i in self.external:
                self.procs[f"supernode{i}"] = self.external[i](self)
            else:
                self.start_node(i)
        deadline = time.monotonic() + timeout
        while self.online_count() < self.num_nodes:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited: {self.log(name)[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"SuperNodes not online: {self.log('superlink')[-2000:]}")
            time.sleep(1.0)
        return self

    def write_cli_config(self) -> None:
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f'address = "127.0.0.1:{self.link_port}"']  # fmt: skip
        if self.tls is None:
            lines.append("insecure = true")
        else:
            lines.append(f'root-certificates = "{self.tls["ca"]}"')
        home = self.root / "cli"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text("\n".join(lines) + "\n")

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            env=self.env("cli"),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def online_count(self) -> int:
        out = self.flwr("supernode", "ls", CONNECTION, "--format", "json", timeout=60)
        try:
            nodes = json.loads(out.stdout).get("nodes", [])
        except (json.JSONDecodeError, AttributeError):
            return 0
        return sum(str(n.get("status", "")).lower() == "online" for n in nodes)

    def submit(self, app: Path, run_config: Path) -> int:
        out = self.flwr("run", str(app), CONNECTION, "--run-config", str(run_config),
                        "--format", "json")  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"flwr run failed: {out.stdout}\n{out.stderr}")
        return int(json.loads(out.stdout)["run-id"])

    def status(self, run_id: int) -> tuple[str, str]:
        out = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        try:
            run = json.loads(out.stdout)["runs"][0]
        except (json.JSONDecodeError, KeyError, IndexError):
            return "unknown", out.stdout + out.stderr
        return str(run["status"]), str(run.get("status-details", ""))

    def wait(self, run_id: int, timeout: float = 600.0) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, details = self.status(run_id)
            if status.startswith("finished"):
                return status, details
            time.sleep(2.0)
        raise TimeoutError(f"run {run_id} still running after {timeout:.0f} s")

    def server_log(self, run_id: int) -> str:
        out = self.flwr("log", str(run_id), CONNECTION, "--show", timeout=60)
        return out.stdout + out.stderr

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            kill_tree(proc, sig)

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name)

    def __enter__(self) -> LocalFederation:
        try:
            return self.start()
        except BaseException:
            self.stop()  # __exit__ does not run when __enter__ raises
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
