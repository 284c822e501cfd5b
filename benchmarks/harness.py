"""Shared timing helpers for the side-by-side benchmarks.

Every benchmark module exposes ``run(quick: bool) -> list[Row]``; ``python -m benchmarks`` runs
them all and prints one table of ratios. A ratio above 1 means gdjax is faster than its peer.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax


@dataclass(frozen=True)
class Row:
    benchmark: str
    case: str
    gdjax_s: float
    peer: str
    peer_s: float
    note: str = ""

    @property
    def speedup(self) -> float:
        """peer time / gdjax time: above 1 means gdjax is faster."""
        return self.peer_s / self.gdjax_s


def block(x):
    return jax.block_until_ready(x)


def best_time(fn: Callable[[], object], *, repeat: int = 5, number: int = 1) -> float:
    """Best wall time of ``number`` calls of ``fn`` over ``repeat`` rounds, per call, in seconds.

    ``fn`` must block on its result (use :func:`block`).
    """
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def first_call_time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def machine() -> str:
    devs = jax.devices()
    return (
        f"{platform.node() or 'host'}: {platform.processor() or platform.machine()}, "
        f"{len(devs)} x {devs[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}"
    )


def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch
