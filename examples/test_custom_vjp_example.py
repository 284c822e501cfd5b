"""Verifying a hand-written ``jax.custom_vjp`` in a pytest test, with ``gdjax.assert_grads_close``.

A custom VJP replaces JAX's derivative with yours, so JAX can no longer catch a mistake in it:
the only independent witness is the function's values. ``assert_grads_close`` compares the
reverse-mode gradient (which runs your backward rule) with finite differences of ``f`` itself and
fails with the worst coordinate, both values and both errors.

Two custom rules are checked here, each with a deliberately wrong twin that the check must catch:

* ``softplus``, ``log(1 + e^x)`` computed stably, whose derivative is ``sigmoid(x)``; the wrong
  rule uses ``sigmoid(-x)`` (a sign slip).
* ``solve(A, b)`` = ``A^{-1} b``, whose VJP with respect to ``b`` is ``A^{-T} g``; the wrong rule
  forgets the transpose, which is invisible for a symmetric ``A`` and wrong for any other.

Run: ``pytest examples/test_custom_vjp_example.py``
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdjax.check import assert_grads_close

# --- softplus -----------------------------------------------------------------------------------


def softplus_rule(derivative):
    """``softplus`` with a custom VJP whose derivative is ``derivative(x)``."""

    @jax.custom_vjp
    def softplus(x):
        return jnp.logaddexp(x, 0.0)

    def fwd(x):
        return softplus(x), x

    def bwd(x, g):
        return (g * derivative(x),)

    softplus.defvjp(fwd, bwd)
    return softplus


softplus = softplus_rule(jax.nn.sigmoid)
softplus_wrong = softplus_rule(lambda x: jax.nn.sigmoid(-x))

# --- a linear solve -----------------------------------------------------------------------------


def solve_rule(transpose: bool):
    """``b -> A^{-1} b`` with a custom VJP ``g -> A^{-T} g`` (or ``A^{-1} g`` when wrong)."""

    @jax.custom_vjp
    def solve(a, b):
        return jnp.linalg.solve(a, b)

    def fwd(a, b):
        x = jnp.linalg.solve(a, b)
        return x, (a, x)

    def bwd(res, g):
        a, x = res
        w = jnp.linalg.solve(a.T if transpose else a, g)
        return -jnp.outer(w, x), w  # d/dA of g . A^{-1} b is -A^{-T} g x^T

    solve.defvjp(fwd, bwd)
    return solve


solve = solve_rule(transpose=True)
solve_wrong = solve_rule(transpose=False)

A = np.array([[4.0, 1.0, 0.0], [2.0, 3.0, 1.0], [0.0, 1.0, 2.0]])  # not symmetric


def loss_of(solver):
    return lambda b: jnp.sum(jnp.sin(solver(jnp.asarray(A, b.dtype), b)))


# --- the tests ----------------------------------------------------------------------------------

POINT = np.linspace(-3.0, 3.0, 7)


def test_softplus_gradient_is_right():
    assert_grads_close(lambda x: jnp.sum(softplus(x)), POINT)


def test_softplus_sign_slip_is_caught():
    with pytest.raises(AssertionError):
        assert_grads_close(lambda x: jnp.sum(softplus_wrong(x)), POINT)


def test_solve_gradient_is_right():
    assert_grads_close(loss_of(solve), np.array([1.0, -2.0, 0.5]))


def test_solve_missing_transpose_is_caught():
    with pytest.raises(AssertionError):
        assert_grads_close(loss_of(solve_wrong), np.array([1.0, -2.0, 0.5]))


def test_solve_gradient_with_respect_to_the_matrix():
    b = np.array([1.0, -2.0, 0.5])
    assert_grads_close(lambda a: jnp.sum(jnp.sin(solve(a, jnp.asarray(b, a.dtype)))), A)


def test_the_missing_transpose_hides_on_a_symmetric_matrix():
    # Why a test point matters: with A = A^T both rules agree, so this check cannot fail.
    s = A + A.T
    b = np.array([1.0, -2.0, 0.5])
    assert_grads_close(lambda b: jnp.sum(jnp.sin(solve_wrong(jnp.asarray(s, b.dtype), b))), b)
