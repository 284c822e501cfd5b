"""One dtype policy for the checker side: every function computes in the dtype of its input
(float64 input runs inside a local ``jax.enable_x64``, the global flag stays off) and returns its
results in it; the gradient check's report says which dtype it used."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdjax import check, finite_diff, sharpness


def cubic(x):
    return jnp.sum(jnp.sin(x) * x + 0.25 * x**4)


X = np.array([0.3, -0.7, 1.1])

# (input, context, expected dtype): x64 off for the first two, as a new user has it.
INPUTS = {
    "float32": (lambda: jnp.asarray(X, jnp.float32), contextlib.nullcontext, "float32"),
    "float64 numpy": (lambda: X.copy(), contextlib.nullcontext, "float64"),
    "float64 jax": (lambda: jnp.asarray(X, jnp.float64), lambda: jax.enable_x64(True), "float64"),
}

# function -> the arrays whose dtype is checked, from a call at x.
CALLS = {
    "numerical_gradient": lambda x: [finite_diff.numerical_gradient(cubic, x)],
    "directional_derivative": lambda x: [finite_diff.directional_derivative(cubic, x, x)],
    "hvp": lambda x: [sharpness.hvp(cubic, x, x)],
    "hessian_top_eigenvalue": lambda x: list(
        sharpness.hessian_top_eigenvalue(cubic, x, num_iters=5)[:3]
    ),
    "epsilon_sharpness": lambda x: list(sharpness.epsilon_sharpness(cubic, x, ascent_steps=2)),
    "interpolate": lambda x: [sharpness.interpolate(cubic, x, 2 * x, np.array([0.0, 1.0]))],
}


@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("name", CALLS)
def test_results_come_back_in_the_input_dtype(name, kind):
    make, context, dtype = INPUTS[kind]
    with context():
        outputs = CALLS[name](make())
    assert not jax.config.jax_enable_x64  # never flipped globally
    for out in outputs:
        assert {str(leaf.dtype) for leaf in jax.tree.leaves(out)} == {dtype}, name


@pytest.mark.parametrize("kind", INPUTS)
def test_the_check_computes_in_the_input_dtype_and_says_so(kind):
    make, context, dtype = INPUTS[kind]
    with context():
        report = check.check_grads(cubic, make())
    assert (report.ok, report.ad_dtype, report.fd_dtype) == (True, dtype, "float64")
    assert f"({dtype})" in str(report)
    assert report.rtol == pytest.approx(np.sqrt(np.finfo(dtype).eps))


def sin_times_x_wrong_at_2(relative_error):
    """The issue's example: a hand-written VJP wrong by ``relative_error`` at index 2."""

    @jax.custom_vjp
    def f(x):
        return jnp.sum(jnp.sin(x) * x)

    def bwd(x, g):
        d = jnp.sin(x) + x * jnp.cos(x)
        return (g * d.at[2].multiply(1 + relative_error),)

    f.defvjp(lambda x: (f(x), x), bwd)
    return f


def test_a_1e_4_error_with_float64_numpy_input_fails_with_x64_off():
    x = np.random.default_rng(0).standard_normal(6)
    f = sin_times_x_wrong_at_2(1e-4)
    report = check.check_grads(f, x)
    assert (report.ok, bool(report), report.index, report.ad_dtype) == (
        False, False, (2,), "float64"
    )
    with pytest.raises(AssertionError, match=r"WRONG GRADIENT[\s\S]*index \(2,\)"):
        check.assert_grads_close(f, x)
    assert check.check_grads(sin_times_x_wrong_at_2(0.0), x)  # bool(report) is report.ok


@pytest.mark.parametrize("kind", INPUTS)
def test_assert_grads_close_judges_in_the_input_dtype(kind):
    """A 1e-4 error is under float32's detection floor (about 3.5e-4) and far above float64's."""
    make, context, dtype = INPUTS[kind]
    f = sin_times_x_wrong_at_2(1e-4)
    with context():
        if dtype == "float32":
            check.assert_grads_close(f, make(), modes=("rev",))
        else:
            with pytest.raises(AssertionError, match=r"index \(2,\)[\s\S]*\(float64\)"):
                check.assert_grads_close(f, make(), modes=("rev",))


def test_a_mixed_pytree_is_judged_by_its_least_precise_leaf():
    """float64 NumPy beside float32 leaves: the float32 leaf's rounding is measured, not failed
    against float64's rtol."""

    def f(p):
        return 1e3 * jnp.sum(jnp.exp(jnp.sin(3 * p["a"]))) + jnp.sum(jnp.cos(p["b"]))

    p = {"a": jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32), "b": np.linspace(0.0, 1.0, 3)}
    report = check.check_grads(f, p, modes=("rev",))
    assert (report.ok, report.ad_dtype) == (True, "float32"), str(report)
