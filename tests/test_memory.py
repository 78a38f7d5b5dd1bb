"""``rss_mb`` follows what a process holds: up by a touched buffer's size, down when it is freed
(unless glibc is told to keep freed memory, as the Makefile tells it to for training speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from spearfl.federation.memory import peak_rss_mb, rss_mb

pytestmark = pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="Linux only")

BUFFER_MB = 300
PROBE = f"""
import gc, json, torch
from spearfl.federation.memory import peak_rss_mb, rss_mb
before = rss_mb()
buffer = torch.ones({BUFFER_MB} * 2**20 // 4, dtype=torch.float32)  # every page written
held = rss_mb()
peak = peak_rss_mb()
del buffer
gc.collect()
print(json.dumps({{"before": before, "held": held, "peak": peak, "after": rss_mb()}}))
"""
KEEP_FREED = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
"""The Makefile's malloc settings: large blocks from the heap, and the heap never trimmed."""


def _probe(glibc_tunables: str | None) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if glibc_tunables:
        env["GLIBC_TUNABLES"] = glibc_tunables
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_rss_is_the_resident_size_psutil_reads():
    assert rss_mb() == pytest.approx(psutil.Process().memory_info().rss / 2**20, abs=5.0)
    assert peak_rss_mb() >= rss_mb() - 1.0


def test_a_touched_buffer_raises_rss_and_freeing_it_gives_it_back():
    mb = _probe(None)  # glibc's defaults: a block this large is its own mmap
    assert 0.9 * BUFFER_MB <= mb["held"] - mb["before"] <= 1.2 * BUFFER_MB
    assert mb["peak"] >= mb["held"] - 1.0
    assert mb["after"] - mb["before"] < 0.1 * BUFFER_MB  # munmap'ed: back to where it was


def test_with_the_makefiles_malloc_settings_freed_memory_stays_resident():
    mb = _probe(KEEP_FREED)
    assert 0.9 * BUFFER_MB <= mb["held"] - mb["before"] <= 1.2 * BUFFER_MB
    assert mb["after"] - mb["before"] > 0.9 * BUFFER_MB  # kept in the heap for the next round
