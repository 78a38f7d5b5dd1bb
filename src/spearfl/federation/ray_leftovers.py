"""Find and stop the Ray processes a killed run left behind.

Ray ties its GCS server and raylet to the driver (they die with it, even on SIGKILL), but the
raylet's agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) and busy workers notice
only later: measured here, the agents outlived a SIGKILLed run by about a minute. Every Ray
process keeps its log files open in its session folder, ``.../session_<date>_<time>_<n>_<pid of
the driver>/logs``, which is how a process is tied to its session even after Ray renamed it
(``ray::IDLE``). A session is dead when its driver is gone *and* its GCS server is gone: then
nothing can use its remaining processes any more. A cluster started with ``ray start`` (whose
starting process exits at once) keeps its GCS server, so it is never touched.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import psutil

_SESSION = re.compile(r"(/[^\s]*?/session_\d{4}-\d\d-\d\d_[\d_-]+_(\d+))/")


@dataclass(frozen=True)
class Leftover:
    pid: int
    name: str
    session: str


def _looks_like_ray(proc: psutil.Process) -> bool:
    name = proc.info.get("name") or ""
    if name.startswith("ray::") or name in ("raylet", "gcs_server"):
        return True
    return any("/ray/" in part for part in proc.info.get("cmdline") or [])


def _session_of(proc: psutil.Process) -> tuple[str, int] | None:
    try:
        files = proc.open_files()
    except (psutil.Error, OSError):
        return None
    for f in files:
        found = _SESSION.search(f.path)
        if found:
            return found.group(1), int(found.group(2))
    return None


def find_leftovers() -> list[Leftover]:
    """This user's Ray processes whose session's driver and GCS server are both gone."""
    me = os.getuid()
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    sessions: dict[str, tuple[int, list[psutil.Process]]] = {}
    for proc in psutil.process_iter(["pid", "name", "cmdline", "uids"]):
        uids = proc.info.get("uids")
        if proc.pid in mine or uids is None or uids.real != me or not _looks_like_ray(proc):
            continue
        found = _session_of(proc)
        if found is None:
            continue
        session, driver = found
        sessions.setdefault(session, (driver, []))[1].append(proc)
    leftovers = []
    for session, (driver, procs) in sessions.items():
        if psutil.pid_exists(driver):
            continue
        if any((p.info.get("name") or "") == "gcs_server" for p in procs):
            continue
        leftovers += [Leftover(p.pid, p.info.get("name") or "?", session) for p in procs]
    return sorted(leftovers, key=lambda x: x.pid)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_leftovers(timeout: float = 5.0) -> tuple[list[Leftover], list[Leftover]]:
    """SIGTERM every leftover, SIGKILL what is still there after ``timeout`` seconds; returns
    (the ones stopped, the ones that could not be stopped)."""
    stopped: list[Leftover] = []
    failed: list[Leftover] = []
    signalled: list[tuple[Leftover, psutil.Process]] = []
    for item in find_leftovers():
        try:
            proc = psutil.Process(item.pid)
            proc.terminate()
            signalled.append((item, proc))
        except psutil.NoSuchProcess:
            stopped.append(item)
        except psutil.AccessDenied:
            failed.append(item)
    _, still = psutil.wait_procs([proc for _, proc in signalled], timeout=timeout)
    for proc in still:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(still, timeout=timeout)
    for item, proc in signalled:
        (failed if _alive(proc) else stopped).append(item)
    return stopped, failed


def describe(items: list[Leftover]) -> str:
    return ", ".join(f"{i.pid} {i.name}" for i in items)
