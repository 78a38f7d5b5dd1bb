"""Memory of a process, host and GPU, as a client's round metrics and the server's history
report it: the peak so far and, on Linux, what is resident now (a peak never falls, so only the
current figure shows whether memory comes back after a round).

No Flower import here: ``benchmarks/gpu_check.py`` measures with the same functions on machines
without Flower.
"""

from __future__ import annotations

import os
import resource
import sys

import torch


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (base model and earlier rounds
    included: a client process is reused across rounds)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def rss_mb() -> float | None:
    """Resident memory of this process now, in MB, from ``/proc/self/statm`` (its second field
    is resident pages); None where there is no such file (not Linux)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            resident_pages = int(handle.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_gpu_peak(device: torch.device) -> None:
    """Start a new high-water mark of ``device``'s memory (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gpu_mb(device: torch.device) -> float | None:
    """Most memory torch held allocated on ``device`` since ``reset_gpu_peak``, in MB (the
    resident base model included); None off CUDA."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20
