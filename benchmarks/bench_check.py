"""gdjax.check.check_grads beside jax.test_util.check_grads, on the same functions and points.

The two do different amounts of work, and the note says so: JAX's checks one random direction in
forward and reverse mode against float32-or-float64 central differences of the inputs' dtype and
raises a bare ``AssertionError``; gdjax's (defaults) checks every coordinate up to 2000 of them
(beyond that, four random directions) in both modes against a float64 Richardson oracle, tests
for kinks, and reports the worst leaf and index. Timed: the first call (tracing and compilation
included, as a test suite pays it) and repeated calls on the same function.

The last row is a 100,000-dimensional function whose custom VJP is wrong in one coordinate:
gdjax finds the direction and bisects to the coordinate; JAX's check raises without a location.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np

from benchmarks.harness import Row, best_time
from gdjax import functions
from gdjax.check import check_grads


def _cases():
    """(name, function factory, point); a factory makes a fresh function (a first call)."""
    return [
        ("x sin x, d=10", lambda: lambda x: jnp.sum(x * jnp.sin(x)), jnp.linspace(-2, 2, 10)),
        ("Rosenbrock, d=100", lambda: lambda x: functions.rosenbrock(x), jnp.linspace(-1, 1, 100)),
        (
            "MLP loss, 1,000 params",
            _mlp_loss,
            {"w": jnp.linspace(-1, 1, 960).reshape(32, 30) / 8, "b": jnp.zeros(40)},
        ),
    ]


def _mlp_loss():
    inputs = jnp.asarray(np.random.default_rng(0).normal(size=(64, 32)), jnp.float32)

    def loss(p):
        hidden = jnp.tanh(inputs @ p["w"] + p["b"][:30])
        return jnp.mean((hidden @ jnp.ones(30) + jnp.sum(p["b"][30:])) ** 2)

    return loss


def _wrong_vjp(wrong_at):
    @jax.custom_vjp
    def f(x):
        return jnp.sum(jnp.sin(x) * x)

    def bwd(x, g):
        return (g * (jnp.sin(x) + x * jnp.cos(x)).at[wrong_at].multiply(1.5),)

    f.defvjp(lambda x: (f(x), x), bwd)
    return f


def _jax_check(f, x):
    jax.test_util.check_grads(f, (x,), order=1, modes=("fwd", "rev"))


def _first_and_repeated(check, make, x, repeat):
    first = _timed(lambda: check(make(), x))
    f = make()
    check(f, x)
    return first, best_time(lambda: check(f, x), repeat=repeat)


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(quick: bool) -> list[Row]:
    repeat = 2 if quick else 5
    rows = []
    for name, make, x in _cases():
        ours_first, ours = _first_and_repeated(lambda f, x: check_grads(f, x), make, x, repeat)
        theirs_first, theirs = _first_and_repeated(_jax_check, make, x, repeat)
        n = sum(a.size for a in jax.tree.leaves(x))
        work = f"gdjax: all {n} coordinates" if n <= 2000 else "gdjax: 4 directions"
        rows.append(
            Row(
                "check",
                f"{name}, first call",
                ours_first,
                "jax.test_util.check_grads",
                theirs_first,
                f"{work}; jax: 1 direction",
            )
        )
        rows.append(
            Row(
                "check",
                f"{name}, repeated",
                ours,
                "jax.test_util.check_grads",
                theirs,
                "same function again",
            )
        )

    n = 10_000 if quick else 100_000
    wrong_at = n * 7 // 9
    x = jnp.linspace(-1.0, 1.0, n)
    report = None

    def ours():
        nonlocal report
        report = check_grads(_wrong_vjp(wrong_at), x)

    def theirs():
        nonlocal caught
        try:
            jax.test_util.check_grads(_wrong_vjp(wrong_at), (x,), order=1, modes=("rev",))
        except AssertionError:
            caught = True

    caught = False
    ours_s, theirs_s = _timed(ours), _timed(theirs)
    assert report.index == (wrong_at,), report
    verdict = "AssertionError, no location" if caught else "passed, missed it"
    rows.append(
        Row(
            "check",
            f"wrong VJP in 1 of {n:,} coordinates, first call",
            ours_s,
            "jax.test_util.check_grads",
            theirs_s,
            f"gdjax: located x[{wrong_at}] ({report.kind}); jax: {verdict}",
        )
    )
    return rows
