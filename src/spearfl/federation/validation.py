"""Checks on a client's reply before it may touch the global adapter.

A single bad reply (a bug, a flipped bit, a hostile device) would otherwise poison every later
round: one NaN spreads through the weighted average into every client's next update. The server
therefore excludes any reply whose adapter does not have exactly the global adapter's tensor
names, shapes and dtypes, holds a non-finite value, moves further than ``fl.max_update_norm``,
or whose ``n_eff`` is not a finite number >= 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

AdapterState = Mapping[str, torch.Tensor]


def update_norm(global_adapter: AdapterState, adapter: AdapterState) -> float:
    """L2 norm of ``adapter - global_adapter`` over every tensor, in float64."""
    total = 0.0
    for key, ref in global_adapter.items():
        diff = adapter[key].detach().to(torch.float64) - ref.detach().to(torch.float64)
        total += float(diff.pow(2).sum())
    return math.sqrt(total)


def _structure_problem(global_adapter: AdapterState, adapter: AdapterState) -> str | None:
    missing = sorted(set(global_adapter) - set(adapter))
    if missing:
        return f"missing tensor {missing[0]!r} ({len(missing)} missing)"
    extra = sorted(set(adapter) - set(global_adapter))
    if extra:
        return f"unexpected tensor {extra[0]!r} ({len(extra)} unexpected)"
    for key, ref in global_adapter.items():
        got = adapter[key]
        if tuple(got.shape) != tuple(ref.shape):
            return f"tensor {key!r} has shape {tuple(got.shape)}, expected {tuple(ref.shape)}"
        if got.dtype != ref.dtype:
            return f"tensor {key!r} has dtype {got.dtype}, expected {ref.dtype}"
    return None


def rejection_reason(
    global_adapter: AdapterState,
    adapter: AdapterState,
    n_eff: object,
    max_update_norm: float | None = None,
) -> str | None:
    """Why this reply must not be aggregated, or None when it is acceptable."""
    if isinstance(n_eff, bool) or not isinstance(n_eff, (int, float)):
        return f"n_eff is {n_eff!r}, not a number"
    if not math.isfinite(n_eff) or n_eff < 0:
        return f"n_eff is {n_eff}, must be a finite number >= 0"
    problem = _structure_problem(global_adapter, adapter)
    if problem:
        return problem
    for key, tensor in adapter.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            return f"tensor {key!r} has {bad} non-finite value(s)"
    if max_update_norm is not None:
        norm = update_norm(global_adapter, adapter)
        if norm > max_update_norm:
            return f"update norm {norm:.4g} exceeds fl.max_update_norm = {max_update_norm:g}"
    return None
