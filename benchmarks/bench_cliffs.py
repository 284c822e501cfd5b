"""Where gdjax.sweep stands against the hand-written loop across problem sizes: dimension x
configs x optimiser.

A quadratic ``0.5 sum(a_i x_i^2)`` with ``a = linspace(1, 3, d)`` from ``x0 = 1``, 500 steps, no
tolerance and no history (``record_every=steps``), one config per learning rate, against the
hand-written ``jit(vmap(scan))`` of the same optax optimiser (no loss, no checks). The ratio says
what the sweep's checks (the loss and a stop check at each segment's end, the divergence
replay, the result record) cost at that size: on XLA:CPU the per-config bookkeeping is a fixed
cost per kernel, so small problems in small batches pay the most. Run with
``python -m benchmarks cliffs``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.harness import Row, best_time, block, first_call_time
from gdjax.sweep import sweep

STEPS = 500


def _quadratic(d: int):
    a = np.linspace(1.0, 3.0, d).astype(np.float32)
    return lambda x: 0.5 * jnp.sum(a * x**2)


def _hand(f, opt, d):
    @jax.jit
    def run(lrs):
        def one(lr):
            tx = opt(lr)

            def step(c, _):
                x, s = c
                u, s = tx.update(jax.grad(f)(x), s, x)
                return (optax.apply_updates(x, u), s), None

            x0 = jnp.ones(d, jnp.float32)
            (x, _), _ = jax.lax.scan(step, (x0, tx.init(x0)), length=STEPS)
            return x

        return jax.vmap(one)(lrs)

    return run


def run(quick: bool) -> list[Row]:
    rows = []
    dims = (2, 8, 32) if quick else (2, 8, 32, 128)
    sizes = (1024, 16384)
    for name, opt, lo, hi in (("sgd", optax.sgd, 0.05, 0.3), ("adam", optax.adam, 1e-3, 0.1)):
        for d in dims:
            f = _quadratic(d)
            hand = _hand(f, opt, d)
            for n in sizes:
                lrs = np.geomspace(lo, hi, n).astype(np.float32)
                x0 = np.ones(d, np.float32)
                gd = lambda lrs=lrs, f=f, x0=x0, name=name: block(sweep(
                    f, x0, name, grid={"learning_rate": lrs}, steps=STEPS, record_every=STEPS,
                    progress=False).params)
                jl = jnp.asarray(lrs)
                hd = lambda jl=jl, hand=hand: block(hand(jl))
                first_call_time(gd)
                first_call_time(hd)
                t_gd = t_hd = float("inf")
                for _ in range(2):  # interleaved: this machine's speed drifts
                    t_gd = min(t_gd, best_time(gd, repeat=3))
                    t_hd = min(t_hd, best_time(hd, repeat=3))
                rows.append(Row("cliffs", f"{name} {d}-D quadratic, {n} lrs, {STEPS} steps", t_gd,
                                "hand jit(vmap(scan))", t_hd, "no history, no tol"))
    return rows

