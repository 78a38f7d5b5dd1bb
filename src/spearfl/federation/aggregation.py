"""Server-side aggregation of LoRA adapter states (SPEC §2).

``weighted_average`` is FedAvg over client adapters weighted by ``n_eff``. ``ServerOptimizer``
optionally treats ``average − global`` as a pseudo-gradient and applies FedAdam / FedYogi
(Reddi et al., "Adaptive Federated Optimization") exactly as the SPEC writes them: ``v`` starts
at ``tau²``, ``m`` at 0, and there is no bias correction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

AdapterState = dict[str, Tensor]

SERVER_OPTIMIZERS = ("fedavg", "fedadam", "fedyogi")


def _check_compatible(
    reference: Mapping[str, Tensor], other: Mapping[str, Tensor], what: str
) -> None:
    """Raise ValueError naming the first tensor whose key or shape differs."""
    missing = sorted(set(reference) - set(other))
    extra = sorted(set(other) - set(reference))
    if missing:
        raise ValueError(f"{what}: missing tensor {missing[0]!r}")
    if extra:
        raise ValueError(f"{what}: unexpected tensor {extra[0]!r}")
    for key, ref in reference.items():
        if tuple(other[key].shape) != tuple(ref.shape):
            raise ValueError(
                f"{what}: tensor {key!r} has shape {tuple(other[key].shape)}, "
                f"expected {tuple(ref.shape)}"
            )


def weighted_average(
    states: Sequence[Mapping[str, Tensor]], weights: Sequence[float]
) -> AdapterState:
    """FedAvg: average ``states`` with ``weights`` normalised to sum to 1.

    All-zero weights fall back to a plain mean (every client returned nothing useful, but the
    round should still move consistently). Negative or non-finite weights are a caller bug and
    raise. Accumulation is in float64 so many clients do not lose precision; the result has the
    dtype of the first state.
    """
    if not states:
        raise ValueError("weighted_average needs at least one state")
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    ws = [float(w) for w in weights]
    for i, w in enumerate(ws):
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weight {i} is {w}; weights must be finite and >= 0")
    total = sum(ws)
    norm = [1.0 / len(ws)] * len(ws) if total == 0 else [w / total for w in ws]

    reference = states[0]
    for i, state in enumerate(states[1:], start=1):
        _check_compatible(reference, state, f"client state {i}")

    out: AdapterState = {}
    for key, ref in reference.items():
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for state, w in zip(states, norm, strict=True):
            acc += w * state[key].detach().to(device="cpu", dtype=torch.float64)
        out[key] = acc.to(ref.dtype)
    return out


class ServerOptimizer:
    """Turns the round's averaged adapter into the next global adapter.

    ``fedavg`` adopts the average as is. ``fedadam``/``fedyogi`` keep per-tensor moments ``m``
    and ``v`` across rounds, so the server must checkpoint them (``state_dict``) to resume a run
    with an identical trajectory.
    """

    def __init__(
        self,
        kind: str = "fedavg",
        lr: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 5e-3,
    ) -> None:
        kind = kind.lower()
        if kind not in SERVER_OPTIMIZERS:
            raise ValueError(f"unknown server optimiser {kind!r}; choose from {SERVER_OPTIMIZERS}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {beta1}, {beta2}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.kind = kind
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.tau = tau
        self.step_count = 0
        self.m: AdapterState = {}
        self.v: AdapterState = {}

    def step(
        self, global_state: Mapping[str, Tensor], averaged_state: Mapping[str, Tensor]
    ) -> AdapterState:
        """Return the new global adapter; the inputs are left untouched."""
        _check_compatible(global_state, averaged_state, "averaged state")
        self.step_count += 1
        if self.kind == "fedavg":
            return {k: averaged_state[k].detach().clone() for k in global_state}

        if not self.m:  # lazy init: the adapter's keys/shapes are only known at the first step
            self.m = {k: torch.zeros_like(t) for k, t in global_state.items()}
            self.v = {k: torch.full_like(t, self.tau**2) for k, t in global_state.items()}
        else:
            _check_compatible(self.m, global_state, "global state vs optimiser moments")

        new_state: AdapterState = {}
        for key, glob in global_state.items():
            glob = glob.detach()
            g = averaged_state[key].detach().to(glob.dtype) - glob
            g2 = g * g
            m = self.beta1 * self.m[key] + (1.0 - self.beta1) * g
            v = self.v[key]
            if self.kind == "fedadam":
                v = self.beta2 * v + (1.0 - self.beta2) * g2
            else:  # fedyogi
                v = v - (1.0 - self.beta2) * g2 * torch.sign(v - g2)
            self.m[key] = m
            self.v[key] = v
            new_state[key] = glob + self.lr * m / (torch.sqrt(v) + self.tau)
        return new_state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically after a restart."""
        return {
            "kind": self.kind,
            "lr": self.lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "tau": self.tau,
            "step": self.step_count,
            "m": {k: t.clone() for k, t in self.m.items()},
            "v": {k: t.clone() for k, t in self.v.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore moments and step count.

        The kind must match (moments of one rule are meaningless to another); the
        hyperparameters stay those given to the constructor, i.e. the resumed run's config.
        """
        if state.get("kind") != self.kind:
            raise ValueError(
                f"checkpoint is for server optimiser {state.get('kind')!r}, not {self.kind!r}"
            )
        m = {k: t.detach().clone() for k, t in state.get("m", {}).items()}
        v = {k: t.detach().clone() for k, t in state.get("v", {}).items()}
        _check_compatible(m, v, "checkpoint moments")
        self.m, self.v = m, v
        self.step_count = int(state.get("step", 0))
