"""check_grads takes jax.grad's conventions: extra arguments (``args=``, traced, so new values
reuse the compilation) and ``has_aux=True`` (``f`` returns ``(value, aux)``)."""

import jax.numpy as jnp
import numpy as np
import pytest
from test_check import custom_sin_times_x

from gdjax import check

X = jnp.asarray(np.random.default_rng(0).standard_normal((16, 4)), jnp.float32)
Y = jnp.linspace(-1.0, 1.0, 16)
WRONG_AT_1 = custom_sin_times_x(wrong_at=1)


def loss(w, x, y):
    """Least squares plus a term with a hand-written VJP wrong at index 1; aux the residual."""
    r = x @ w - y
    return jnp.mean(r**2) + WRONG_AT_1(w), {"residual": r}


def test_args_and_aux_are_passed_and_a_wrong_rule_is_found():
    report = check.check_grads(loss, jnp.ones(4), args=(X, Y), has_aux=True, modes=("rev",))
    assert (report.kind, report.index) == ("wrong gradient", (1,))
    compiled = check._fd_coordinates._cache_size()
    again = check.check_grads(loss, jnp.ones(4), args=(2 * X, Y), has_aux=True, modes=("rev",))
    assert again.index == (1,) and again.finite_diff != report.finite_diff  # the new data
    assert check._fd_coordinates._cache_size() == compiled  # and no new compilation


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(args=(X, Y)), TypeError, "f must return a scalar"),  # a pair without has_aux
        (dict(args=(X, "y"), has_aux=True), TypeError, r"args must hold arrays.*args\[1\]='y'"),
        (dict(args=(X, Y), has_aux="yes"), TypeError, "has_aux must be True or False"),
    ],
)
def test_bad_args_and_aux_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        check.check_grads(loss, jnp.ones(4), **kwargs)


def test_has_aux_needs_a_pair():
    with pytest.raises(ValueError, match=r"has_aux=True, f must return a pair .* shape \(\)"):
        check.check_grads(lambda w: jnp.sum(w**2), jnp.ones(2), has_aux=True)
