"""Peak memory of a client process, host and GPU, as its round metrics report them.

No Flower import here: ``benchmarks/gpu_check.py`` measures with the same functions on machines
without Flower.
"""

from __future__ import annotations

import resource
import sys

import torch


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (base model and earlier rounds
    included: a client process is reused across rounds)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


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
