"""Non-IID Dirichlet split of a training set across federated clients (SPEC §2).

For each label class we draw client shares from Dir(alpha·1) and deal that class's shuffled
examples out in those shares. If some client ends up with fewer than ``min_size`` examples the
draw is repeated; after ``max_attempts`` failed draws at one minimum the minimum is lowered by one
(with a logged warning), so the procedure always terminates. Finally every client is capped at
``max_per_client`` examples by a seeded random subset.

Why not ``flwr_datasets.partitioner.DirichletPartitioner`` (flwr-datasets 0.6.1): it only works
on a Hugging Face ``datasets.Dataset`` column, not on a plain list of labels; it gives up with a
``ValueError`` after 10 failed draws instead of relaxing the minimum, so small or very skewed
splits crash a run; it has no per-client cap; it splits each label's indices in dataset order
(no shuffle before dealing, so clients get contiguous runs of the source file); and it refuses
more partitions than rows. Those are the SPEC's requirements, so the split is implemented here.

Returned index lists are sorted ascending (the source order), which keeps the output stable
and easy to diff between runs; training shuffles within a client anyway.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS = 100


def bucket_labels(labels: Sequence[Hashable], num_classes: int | None = None) -> list[int]:
    """Map raw labels to class ids ``0..C-1`` used for the Dirichlet draw.

    With ``num_classes`` None (or not smaller than the number of distinct labels) every distinct
    label is its own class. Otherwise the distinct labels are sorted by their string form and the
    label at rank ``r`` goes to class ``r % num_classes`` (round robin), so the bucketing depends
    only on the set of labels, never on their order or frequency in the data.
    """
    distinct = sorted({str(lab) for lab in labels})
    rank = {lab: r for r, lab in enumerate(distinct)}
    if num_classes is not None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if num_classes < len(distinct):
            return [rank[str(lab)] % num_classes for lab in labels]
    return [rank[str(lab)] for lab in labels]


def _split_counts(shares: np.ndarray, total: int) -> np.ndarray:
    """Turn shares into integer counts summing to ``total`` (largest remainder).

    Plain floor-of-cumsum (as in flwr-datasets) hands every rounding leftover to the last
    client; largest-remainder spreads them to whoever was closest to the next example.
    """
    exact = shares * total
    counts = np.floor(exact).astype(np.int64)
    leftover = total - int(counts.sum())
    if leftover > 0:
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:leftover]] += 1
    return counts


def _draw_shares(rng: np.random.Generator, alpha: float, num_clients: int) -> np.ndarray:
    """One Dir(alpha·1) draw, guarded against the degenerate all-zero/NaN draws of tiny alpha."""
    shares = np.nan_to_num(rng.dirichlet(np.full(num_clients, alpha)), nan=0.0)
    total = float(shares.sum())
    if not math.isfinite(total) or total <= 0.0:
        shares = np.zeros(num_clients)
        shares[int(rng.integers(num_clients))] = 1.0
        return shares
    return shares / total


def dirichlet_partition(
    labels: Sequence[Hashable],
    num_clients: int,
    alpha: float,
    seed: int,
    min_size: int = 10,
    max_per_client: int | None = None,
    num_classes: int | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> list[list[int]]:
    """Split example indices ``0..len(labels)-1`` across ``num_clients`` clients.

    Returns one ascending index list per client. Before capping, every index is assigned to
    exactly one client. ``min_size`` is honoured when feasible; when there are fewer than
    ``num_clients * min_size`` examples the target starts at ``len(labels) // num_clients``, and
    it is lowered by one after every ``max_attempts`` failed draws. ``max_per_client`` is applied
    last and wins over ``min_size``. Same inputs give the same output (``default_rng(seed)``).
    """
    _check_arguments(num_clients, alpha, min_size, max_per_client, max_attempts)
    n = len(labels)
    if n == 0:
        return [[] for _ in range(num_clients)]

    classes = np.asarray(bucket_labels(labels, num_classes), dtype=np.int64)
    class_ids = np.unique(classes)
    class_members = [np.flatnonzero(classes == c) for c in class_ids]

    rng = np.random.default_rng(seed)

    target = min(min_size, n // num_clients)
    if target < min_size:
        logger.warning(
            "only %d examples for %d clients: min client size lowered from %d to %d",
            n,
            num_clients,
            min_size,
            target,
        )

    # Draw only the per-class counts until they satisfy the minimum; the (costlier) shuffling
    # and dealing of indices happens once, for the accepted draw.
    class_sizes = [len(m) for m in class_members]
    counts = _accepted_counts(rng, alpha, num_clients, class_sizes, target, max_attempts)
    parts = _deal(rng, class_members, counts, num_clients)
    return [_capped(rng, sorted(part), max_per_client) for part in parts]


def _check_arguments(
    num_clients: int,
    alpha: float,
    min_size: int,
    max_per_client: int | None,
    max_attempts: int,
) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive finite number, got {alpha}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    if max_per_client is not None and max_per_client < 1:
        raise ValueError(f"max_per_client must be >= 1 or None, got {max_per_client}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")


def _accepted_counts(
    rng: np.random.Generator,
    alpha: float,
    num_clients: int,
    class_sizes: Sequence[int],
    target: int,
    max_attempts: int,
) -> np.ndarray:
    """``[classes, clients]`` example counts of the first draw that gives every client at
    least ``target`` examples; the target drops by one after every ``max_attempts`` misses."""
    attempts = 0
    while True:
        counts = np.stack(
            [_split_counts(_draw_shares(rng, alpha, num_clients), size) for size in class_sizes]
        )
        if int(counts.sum(axis=0).min()) >= target:
            return counts
        attempts += 1
        if attempts >= max_attempts:
            logger.warning(
                "Dirichlet split (alpha=%g, %d clients): no draw in %d attempts gave every "
                "client >= %d examples; relaxing the minimum to %d",
                alpha,
                num_clients,
                attempts,
                target,
                target - 1,
            )
            target -= 1
            attempts = 0


def _deal(
    rng: np.random.Generator,
    class_members: Sequence[np.ndarray],
    counts: np.ndarray,
    num_clients: int,
) -> list[list[int]]:
    """Each class's indices shuffled and dealt out in ``counts`` order: one list per client."""
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for members, row in zip(class_members, counts, strict=True):
        shuffled = rng.permutation(members)
        bounds = np.concatenate(([0], np.cumsum(row)))
        for client in range(num_clients):
            parts[client].extend(shuffled[bounds[client] : bounds[client + 1]].tolist())
    return parts


def _capped(rng: np.random.Generator, part: list[int], max_per_client: int | None) -> list[int]:
    """``part`` (ascending), or a random ``max_per_client`` of it when it is longer."""
    if max_per_client is None or len(part) <= max_per_client:
        return part
    keep = rng.choice(len(part), size=max_per_client, replace=False)
    return [part[i] for i in sorted(keep.tolist())]


def partition_summary(parts: Sequence[Sequence[int]], labels: Sequence[Hashable]) -> dict[str, Any]:
    """JSON-friendly description of a split for the run log (sizes and per-client label mix)."""
    sizes = [len(p) for p in parts]
    label_counts = [dict(sorted(Counter(str(labels[i]) for i in part).items())) for part in parts]
    return {
        "num_clients": len(parts),
        "total": sum(sizes),
        "sizes": sizes,
        "min_size": min(sizes, default=0),
        "max_size": max(sizes, default=0),
        "mean_size": (sum(sizes) / len(sizes)) if sizes else 0.0,
        "label_counts": label_counts,
    }
