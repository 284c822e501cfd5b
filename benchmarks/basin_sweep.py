"""The 1,048,576-start basin-of-attraction map of Himmelblau: time and peak memory of one sweep.

Run as a script (a fresh process, so its peak resident memory is the sweep's own)::

    python -m benchmarks.basin_sweep [--hand] [n_per_axis] [steps]

Every start of a ``n x n`` grid over ``[-5, 5]^2`` (default 1024 x 1024) runs plain gradient
descent (``sgd``, learning rate 0.01); each converged start is labelled with the minimiser it
reached. Prints one JSON line: wall seconds (first call, compilation included), peak resident
memory (``VmHWM``), the status counts and the share of starts in each basin. With ``--hand``,
the hand-written ``jit(vmap(scan))`` peer's first call instead, in the same conditions: a fresh
process whose backend one trivial program has started (its start-up, 0.1-0.3 s here, is no
side's cost), so neither side inherits JAX's warmed caches from the other.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np

N, STEPS = 1024, 500


def starts(n: int) -> np.ndarray:
    """The ``n x n`` grid of float32 starts over Himmelblau's box."""
    from gdjax import functions
    from gdjax.sweep import starts_grid

    return starts_grid(functions.himmelblau.domain, n).astype(np.float32)


def peak_rss_mib() -> float:
    """This program's peak resident memory: ``VmHWM`` (``ru_maxrss`` would include the memory
    of the parent that forked it, which Linux carries over ``exec``)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _start_backend() -> None:
    import jax
    import jax.numpy as jnp

    jax.block_until_ready(jax.jit(lambda x: x + 1)(jnp.ones(3)))


def hand(n: int = N, steps: int = STEPS) -> dict:
    """The peer's first call: :func:`benchmarks.bench_sweep._hand_basin`."""
    import jax

    from benchmarks.bench_sweep import _hand_basin

    grid = starts(n)
    _start_backend()
    t0 = time.perf_counter()
    jax.block_until_ready(_hand_basin(grid, steps))
    return {"starts": len(grid), "steps": steps, "seconds": round(time.perf_counter() - t0, 3)}


def main(n: int = N, steps: int = STEPS) -> dict:
    from gdjax import functions
    from gdjax.sweep import sweep

    f = functions.himmelblau
    grid = starts(n)
    _start_backend()
    t0 = time.perf_counter()
    res = sweep(f, grid[0], "sgd", learning_rate=0.01, steps=steps, tol=1e-3,
                grid={"x0": grid}, progress=False)
    seconds = time.perf_counter() - t0
    distance = np.linalg.norm(res.params[:, None, :] - f.minimizers[None].astype(np.float32),
                              axis=-1)
    basin = np.where(res.status == "converged", np.argmin(distance, axis=1), -1)
    return {
        "starts": len(res),
        "steps": steps,
        "seconds": round(seconds, 3),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "counts": res.counts(),
        "basin_share": [round(float(np.mean(basin == k)), 4) for k in range(len(f.minimizers))],
        "history_records": int(res.history.loss.shape[1]),
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    side = hand if args[:1] == ["--hand"] else main
    print(json.dumps(side(*(int(a) for a in args if a != "--hand"))), flush=True)
