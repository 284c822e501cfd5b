"""gdjax.finite_diff.numerical_gradient beside the seed notes' NumPy loop.

* Speed: the seed's ``numerical_gradient`` (central differences, ``h = 1e-4``, a Python loop over
  coordinates) against gdjax's (the same estimator, every perturbed evaluation vmapped in chunks
  under ``jit``), in float64, at d = 10 ... 10,000, on a sum of squares and on a smooth sum with
  ``sin``. gdjax is timed as called from a jitted function, after its first call; the note gives
  the first call (tracing and compilation).
* Accuracy: the largest relative error against the closed-form gradient of gdjax's Richardson
  extrapolation and complex step, beside the seed's central differences, with their times.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import Row, best_time, block
from gdjax.finite_diff import numerical_gradient


def seed_numerical_gradient(f, x):
    # The seed notes' estimator, verbatim (../shared/seed/gradient-descent-notes.ko.txt).
    h = 1e-4
    grad = np.zeros_like(x)
    for idx in range(x.size):
        tmp_val = x[idx]
        x[idx] = tmp_val + h
        fxh1 = f(x)
        x[idx] = tmp_val - h
        fxh2 = f(x)
        grad[idx] = (fxh1 - fxh2) / (2 * h)
        x[idx] = tmp_val
    return grad


# (name, NumPy f, jnp f, gradient in closed form)
FUNCTIONS = [
    ("sum of squares", lambda x: np.sum(x**2), lambda x: jnp.sum(x**2), lambda x: 2 * x),
    (
        "sum of x sin x",
        lambda x: np.sum(x * np.sin(x)),
        lambda x: jnp.sum(x * jnp.sin(x)),
        lambda x: np.sin(x) + x * np.cos(x),
    ),
]


def _speed(d: int, quick: bool) -> list[Row]:
    rows = []
    x = np.linspace(-2.0, 2.0, d)
    xj = jnp.asarray(x)
    for name, f_np, f_jnp, _ in FUNCTIONS:
        grad = jax.jit(lambda x, f=f_jnp: numerical_gradient(f, x, step=1e-4))
        t0 = time.perf_counter()
        block(grad(xj))
        first = time.perf_counter() - t0
        ours = best_time(lambda g=grad: block(g(xj)), repeat=3 if quick else 7)
        seed = best_time(
            lambda f=f_np: seed_numerical_gradient(f, x.copy()), repeat=1 if d >= 10_000 else 3
        )
        rows.append(
            Row(
                "fd",
                f"central, {name}, d={d}",
                ours,
                "seed NumPy loop",
                seed,
                f"float64; first call {first:.2f} s",
            )
        )
    return rows


def _accuracy(d: int, quick: bool) -> list[Row]:
    _, f_np, f_jnp, exact_grad = FUNCTIONS[1]
    x = np.linspace(-2.0, 2.0, d)
    xj = jnp.asarray(x)
    exact = exact_grad(x)
    seed_time = best_time(lambda: seed_numerical_gradient(f_np, x.copy()), repeat=3)
    seed_error = _relative_error(seed_numerical_gradient(f_np, x.copy()), exact)
    rows = []
    for method in ("richardson", "complex_step"):
        grad = jax.jit(lambda x, m=method: numerical_gradient(f_jnp, x, method=m))
        error = _relative_error(np.asarray(grad(xj)), exact)
        ours = best_time(lambda g=grad: block(g(xj)), repeat=3 if quick else 7)
        rows.append(
            Row(
                "fd",
                f"accuracy, {method}, x sin x, d={d}",
                ours,
                "seed NumPy loop",
                seed_time,
                f"max rel. error {error:.1e} (seed central h=1e-4: {seed_error:.1e})",
            )
        )
    return rows


def _relative_error(g, exact) -> float:
    return float(np.max(np.abs(g - exact)) / np.max(np.abs(exact)))


def run(quick: bool) -> list[Row]:
    with jax.enable_x64(True):
        rows = []
        for d in (10, 100, 1000) if quick else (10, 100, 1000, 10_000):
            rows += _speed(d, quick)
        rows += _accuracy(100, quick)
    return rows
