"""Tests for FedAvg and the FedAdam/FedYogi server optimisers (SPEC §2)."""

from __future__ import annotations

import io
import math

import pytest
import torch

from spearfl.federation.aggregation import ServerOptimizer, weighted_average


def st(**tensors: list[float]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in tensors.items()}


def test_weighted_average_by_hand() -> None:
    a = st(x=[1.0, 2.0], y=[[0.0, 4.0]])
    b = st(x=[5.0, -2.0], y=[[8.0, 0.0]])
    out = weighted_average([a, b], [1, 3])  # -> 0.25 * a + 0.75 * b
    assert torch.allclose(out["x"], torch.tensor([4.0, -1.0]))
    assert torch.allclose(out["y"], torch.tensor([[6.0, 1.0]]))
    assert out["x"].dtype == torch.float32


def test_weighted_average_all_zero_weights_is_plain_mean() -> None:
    a, b, c = st(x=[3.0]), st(x=[6.0]), st(x=[0.0])
    assert torch.allclose(weighted_average([a, b, c], [0, 0, 0])["x"], torch.tensor([3.0]))


def test_weighted_average_zero_weight_client_ignored() -> None:
    out = weighted_average([st(x=[1.0]), st(x=[100.0])], [2.0, 0.0])
    assert torch.allclose(out["x"], torch.tensor([1.0]))


def test_weighted_average_does_not_alias_inputs() -> None:
    a = st(x=[1.0, 2.0])
    out = weighted_average([a], [1.0])
    out["x"] += 1
    assert torch.equal(a["x"], torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("weights", [[1.0, -1.0], [1.0, float("nan")], [float("inf"), 1.0]])
def test_weighted_average_bad_weights(weights: list[float]) -> None:
    with pytest.raises(ValueError):
        weighted_average([st(x=[1.0]), st(x=[2.0])], weights)


def test_weighted_average_mismatches_name_the_tensor() -> None:
    with pytest.raises(ValueError, match="'lora_B'"):
        weighted_average([st(lora_A=[1.0], lora_B=[1.0]), st(lora_A=[1.0])], [1, 1])
    with pytest.raises(ValueError, match="'extra'"):
        weighted_average([st(lora_A=[1.0]), st(lora_A=[1.0], extra=[1.0])], [1, 1])
    with pytest.raises(ValueError, match="'lora_A'"):
        weighted_average([st(lora_A=[1.0]), st(lora_A=[1.0, 2.0])], [1, 1])
    with pytest.raises(ValueError):
        weighted_average([st(x=[1.0])], [1, 2])
    with pytest.raises(ValueError):
        weighted_average([], [])


def test_fedavg_returns_average() -> None:
    opt = ServerOptimizer("fedavg")
    avg = st(x=[1.0, 2.0])
    out = opt.step(st(x=[0.0, 0.0]), avg)
    assert torch.equal(out["x"], avg["x"])
    assert out["x"] is not avg["x"]


# Deltas (avg − global) per round. Round 2/3 include tiny deltas so that FedYogi sees both
# signs of (v − g²).
DELTAS = [[1.0, -2.0], [0.5, 1e-3], [1e-3, -0.5]]
GLOBAL0 = [0.5, -1.0]


def reference(kind: str, lr: float, b1: float, b2: float, tau: float) -> list[list[float]]:
    """The SPEC formulas on plain floats: the global after each of 3 rounds."""
    glob = list(GLOBAL0)
    m = [0.0, 0.0]
    v = [tau * tau, tau * tau]
    history = []
    for delta in DELTAS:
        avg = [glob[i] + delta[i] for i in range(2)]
        for i in range(2):
            g = avg[i] - glob[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            if kind == "fedadam":
                v[i] = b2 * v[i] + (1 - b2) * g * g
            else:
                diff = v[i] - g * g
                sign = (diff > 0) - (diff < 0)
                v[i] = v[i] - (1 - b2) * g * g * sign
            glob[i] = glob[i] + lr * m[i] / (math.sqrt(v[i]) + tau)
        history.append(list(glob))
    return history


@pytest.mark.parametrize("kind", ["fedadam", "fedyogi"])
@pytest.mark.parametrize("hyper", [(1e-2, 0.9, 0.99, 5e-3), (0.3, 0.5, 0.9, 1e-2)])
def test_adaptive_matches_hand_reference(kind: str, hyper: tuple[float, ...]) -> None:
    lr, b1, b2, tau = hyper
    expected = reference(kind, lr, b1, b2, tau)
    opt = ServerOptimizer(kind, lr=lr, beta1=b1, beta2=b2, tau=tau)
    ref_glob = list(GLOBAL0)
    glob = {"w": torch.tensor(GLOBAL0, dtype=torch.float64)}
    for rnd, delta in enumerate(DELTAS):
        avg = {"w": torch.tensor([ref_glob[i] + delta[i] for i in range(2)], dtype=torch.float64)}
        glob = opt.step(glob, avg)
        assert glob["w"].tolist() == pytest.approx(expected[rnd], rel=1e-9, abs=1e-12)
        ref_glob = expected[rnd]
    assert opt.step_count == 3


def test_defaults_first_step_by_hand() -> None:
    # First FedAdam step with defaults, g = 1: m = 0.1, v = 0.99*tau² + 0.01.
    opt = ServerOptimizer("fedadam")
    out = opt.step(st(w=[0.0]), st(w=[1.0]))
    v = 0.99 * 25e-6 + 0.01
    assert out["w"].item() == pytest.approx(1e-2 * 0.1 / (math.sqrt(v) + 5e-3), rel=1e-6)


def test_yogi_differs_from_adam() -> None:
    adam, yogi = ServerOptimizer("fedadam"), ServerOptimizer("fedyogi")
    ga = gy = st(w=[0.0, 0.0])
    for delta in DELTAS:
        ga = adam.step(ga, {"w": ga["w"] + torch.tensor(delta)})
        gy = yogi.step(gy, {"w": gy["w"] + torch.tensor(delta)})
    assert not torch.allclose(ga["w"], gy["w"])


def test_step_leaves_inputs_untouched() -> None:
    opt = ServerOptimizer("fedyogi")
    glob, avg = st(w=[1.0, 2.0]), st(w=[2.0, 0.0])
    opt.step(glob, avg)
    assert torch.equal(glob["w"], torch.tensor([1.0, 2.0]))
    assert torch.equal(avg["w"], torch.tensor([2.0, 0.0]))


@pytest.mark.parametrize("kind", ["fedadam", "fedyogi"])
def test_state_dict_round_trip_continues_identically(kind: str) -> None:
    rounds = [
        st(a=[1.0, -2.0], b=[[0.5]]),
        st(a=[0.2, 0.1], b=[[-1.0]]),
        st(a=[3.0, 0.0], b=[[0.0]]),
    ]
    start = st(a=[0.0, 0.0], b=[[0.0]])

    straight = ServerOptimizer(kind)
    g_straight = start
    for avg in rounds:
        g_straight = straight.step(g_straight, avg)

    first = ServerOptimizer(kind)
    g = first.step(start, rounds[0])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = ServerOptimizer(kind)
    resumed.load_state_dict(torch.load(buf))
    assert resumed.step_count == 1
    for avg in rounds[1:]:
        g = resumed.step(g, avg)

    assert resumed.step_count == 3
    for key in g_straight:
        assert torch.equal(g[key], g_straight[key])


def test_load_state_dict_rejects_other_kind() -> None:
    opt = ServerOptimizer("fedadam")
    opt.step(st(w=[0.0]), st(w=[1.0]))
    with pytest.raises(ValueError):
        ServerOptimizer("fedyogi").load_state_dict(opt.state_dict())


def test_optimizer_validation() -> None:
    with pytest.raises(ValueError):
        ServerOptimizer("sgd")
    with pytest.raises(ValueError):
        ServerOptimizer("fedadam", tau=0.0)
    with pytest.raises(ValueError):
        ServerOptimizer("fedadam", beta1=1.0)
    opt = ServerOptimizer("fedadam")
    opt.step(st(w=[0.0]), st(w=[1.0]))
    with pytest.raises(ValueError, match="'w'"):
        opt.step(st(w=[0.0, 1.0]), st(w=[1.0, 1.0]))
    with pytest.raises(ValueError, match="'w'"):
        opt.step(st(w=[0.0]), st(w=[1.0, 1.0]))
