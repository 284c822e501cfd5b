"""gdjax.sharpness beside the obvious alternatives, on a 64-32-10 MLP loss on ``load_digits``.

* ``hessian_top_eigenvalue`` (matrix-free power iteration) against the dense route: the full
  Hessian by ``jax.hessian`` and ``jnp.linalg.eigvalsh``, both under ``jit``.
* ``epsilon_sharpness`` (projected gradient ascent, 20 steps) against the paper's inner solver:
  SciPy's L-BFGS-B with 10 iterations on the same box, with a jitted value-and-gradient. The note
  gives both sharpness values: the maximisation is local, the larger value is the better one.
* ``epsilon_sharpness`` vmapped over 8 points against a Python loop of the same calls.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from benchmarks.harness import Row, best_time, block, first_call_time
from gdjax.sharpness import epsilon_sharpness, hessian_top_eigenvalue

EPSILON = 1e-3


def _mlp_loss():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = jnp.asarray(d.data / 16.0, jnp.float32), jnp.asarray(d.target)

    def loss(p):
        logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], 1))

    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.normal(size=(64, 32)) / 8, jnp.float32),
        "b1": jnp.zeros(32),
        "w2": jnp.asarray(rng.normal(size=(32, 10)) / np.sqrt(32), jnp.float32),
        "b2": jnp.zeros(10),
    }
    return loss, params


def _scipy_sharpness(loss, params, epsilon, maxiter=10):
    """Keskar et al.'s metric with A = I, maximised by L-BFGS-B as in the paper.

    Returns a function computing it; the jitted value-and-gradient is compiled once, outside.
    """
    from scipy.optimize import minimize as scipy_minimize

    flat, unravel = ravel_pytree(params)
    neg = jax.jit(jax.value_and_grad(lambda z: -loss(unravel(z))))
    x0 = np.asarray(flat, np.float64)
    half = epsilon * (np.abs(x0) + 1)
    bounds = list(zip(x0 - half, x0 + half, strict=True))

    def fun(z):
        v, g = neg(jnp.asarray(z, flat.dtype))
        return float(v), np.asarray(g, np.float64)

    def sharpness():
        f0 = -fun(x0)[0]
        res = scipy_minimize(
            fun, x0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": maxiter}
        )
        return 100 * (-res.fun - f0) / (1 + f0)

    return sharpness


def run(quick: bool) -> list[Row]:
    loss, params = _mlp_loss()
    n = ravel_pytree(params)[0].size
    repeat = 3 if quick else 10
    rows = []

    # Top eigenvalue: matrix-free against dense.
    flat, unravel = ravel_pytree(params)
    top = jax.jit(lambda p: hessian_top_eigenvalue(loss, p).eigenvalue)
    dense = jax.jit(lambda z: jnp.linalg.eigvalsh(jax.hessian(lambda w: loss(unravel(w)))(z))[-1])
    ours = lambda: block(top(params))
    theirs = lambda: block(dense(flat))
    first_call_time(ours)
    first_call_time(theirs)
    lam, lam_dense = float(top(params)), float(dense(flat))
    rows.append(Row(
        "sharpness", f"top Hessian eigenvalue, MLP n={n}", best_time(ours, repeat=repeat),
        "jax.hessian + eigvalsh (jit)", best_time(theirs, repeat=1 if quick else 3),
        f"lambda {lam:.5g} vs {lam_dense:.5g}",
    ))

    # Epsilon-sharpness: our ascent against the paper's 10 L-BFGS-B iterations.
    sharp = jax.jit(lambda p: epsilon_sharpness(loss, p, EPSILON).sharpness)
    ours = lambda: block(sharp(params))
    scipy_sharpness = _scipy_sharpness(loss, params, EPSILON)
    first_call_time(ours)
    phi, phi_scipy = float(sharp(params)), scipy_sharpness()
    rows.append(Row(
        "sharpness", f"epsilon-sharpness eps={EPSILON}, MLP n={n}", best_time(ours, repeat=repeat),
        "scipy L-BFGS-B, 10 iterations", best_time(scipy_sharpness, repeat=repeat),
        f"phi {phi:.4g} vs {phi_scipy:.4g}",
    ))

    # A batch of points: one vmapped program against a loop of calls.
    points = jax.tree.map(
        lambda a: a + 0.05 * jax.random.normal(jax.random.key(1), (8, *a.shape), a.dtype), params
    )
    batched = jax.jit(jax.vmap(lambda p: epsilon_sharpness(loss, p, EPSILON).sharpness))
    ours = lambda: block(batched(points))
    loop = lambda: block([sharp(jax.tree.map(lambda a, i=i: a[i], points)) for i in range(8)])
    first_call_time(ours)
    first_call_time(loop)
    rows.append(Row(
        "sharpness", "  8 points, vmapped", best_time(ours, repeat=repeat),
        "loop of jitted calls", best_time(loop, repeat=repeat),
    ))
    return rows
