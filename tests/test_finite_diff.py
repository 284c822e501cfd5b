"""Finite-difference gradients against closed forms, jax.grad and the seed notes' NumPy loop."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from seed_notes import function_2
from seed_notes import numerical_gradient as seed_numerical_gradient

from gdjax import functions
from gdjax.finite_diff import METHODS, directional_derivative, numerical_gradient

# --- smooth functions of pytrees, with gradients in closed form ------------------------------


def mixed(p):
    """exp/sin composition and a polynomial on a dict holding an n-D array and a tuple."""
    w, (a, b) = p["w"], p["t"]
    return jnp.sum(jnp.exp(jnp.sin(w))) + jnp.sum(a**3 - 2 * a) * b + jnp.log1p(b**2)


def mixed_grad(p):
    w, (a, b) = p["w"], p["t"]
    return {
        "w": jnp.cos(w) * jnp.exp(jnp.sin(w)),
        "t": (b * (3 * a**2 - 2), jnp.sum(a**3 - 2 * a) + 2 * b / (1 + b**2)),
    }


def rosenbrock_grad(x):
    g = jnp.zeros_like(x)
    g = g.at[:-1].add(-400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1]))
    return g.at[1:].add(200 * (x[1:] - x[:-1] ** 2))


def cube(x):
    return jnp.sum(x**3) / 3


MIXED_POINT = {
    "w": np.linspace(-1.5, 1.2, 6).reshape(2, 3),
    "t": (np.array([0.3, -0.7, 1.1]), np.array(0.4)),
}
ROSENBROCK_POINT = np.array([-1.2, 1.0, 0.5, 0.8])

# Relative accuracy each method reaches on these functions: its truncation and rounding errors
# balance at eps**(1 - a) for the default step eps**a (eps**(2/3) central, eps**(1/2) one-sided,
# eps**(6/7) Richardson); the complex step has no cancellation. The factor covers the ratios of
# higher derivatives to the first one.
ACCURACY = {
    "central": lambda eps: 30 * eps ** (2 / 3),
    "forward": lambda eps: 30 * eps ** (1 / 2),
    "backward": lambda eps: 30 * eps ** (1 / 2),
    "richardson": lambda eps: 30 * eps ** (6 / 7),
    "complex_step": lambda eps: 30 * eps,
}


def assert_tree_close(actual, expected, rtol):
    """Every leaf within ``rtol`` relative to the largest entry of the expected gradient."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    scale = max(float(jnp.max(jnp.abs(e))) for e in jax.tree.leaves(expected))
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, e, rtol=0, atol=rtol * scale)


def as_dtype(tree, dtype):
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)


def combined(p):
    return mixed(p) + functions.rosenbrock(p["r"])


def combined_grad(p):
    return {**mixed_grad(p), "r": rosenbrock_grad(p["r"])}


COMBINED_POINT = {**MIXED_POINT, "r": ROSENBROCK_POINT}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_matches_the_closed_form_gradient(method, dtype):
    with jax.enable_x64(dtype == "float64"):
        eps = float(jnp.finfo(dtype).eps)
        x = as_dtype(COMBINED_POINT, dtype)
        g, error = numerical_gradient(combined, x, method=method, return_error=True)
        assert jax.tree.map(lambda a: a.dtype, g) == jax.tree.map(lambda a: a.dtype, x)
        exact = combined_grad(x)
        assert_tree_close(g, exact, ACCURACY[method](eps))
        assert_tree_close(g, jax.grad(combined)(x), ACCURACY[method](eps))
        if dtype == "float64":  # the error estimate bounds the actual error
            actual = jax.tree.map(lambda a, b: jnp.abs(a - b), g, exact)
            for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(error), strict=True):
                assert np.all(a <= e), (a, e)


def test_richardson_reaches_1e_10_and_complex_step_machine_precision_in_float64():
    with jax.enable_x64(True):
        x = as_dtype(COMBINED_POINT, "float64")
        exact = combined_grad(x)
        assert_tree_close(numerical_gradient(combined, x, method="richardson"), exact, 1e-10)
        assert_tree_close(numerical_gradient(combined, x, method="complex_step"), exact, 4e-16)


def test_the_default_step_scales_with_x():
    # At x = 1000 the rounding error eps |f| / h of an unscaled step eps**(1/3) would be 1e-8 of
    # f' = x**2; scaled by |x| the step keeps it near 1e-11.
    with jax.enable_x64(True):
        for x in (1000.0, -3000.0):
            g = numerical_gradient(cube, jnp.array([x]))
            np.testing.assert_allclose(g, [x**2], rtol=1e-9)


@settings(max_examples=10, deadline=None)
@given(
    coefficients=st.lists(st.floats(-3, 3), min_size=5, max_size=5),
    x=st.lists(st.floats(-2, 2), min_size=1, max_size=4),
    method=st.sampled_from(["central", "richardson", "complex_step"]),
)
def test_random_polynomials_against_numpy_derivatives(coefficients, x, method):
    # p(t) = sum_k c_k t^k on every coordinate; p' comes from NumPy, independently of JAX.
    p = np.polynomial.Polynomial(coefficients)
    c = np.asarray(coefficients)

    def f(x):
        return jnp.sum(sum(c[k] * x**k for k in range(len(c))))

    with jax.enable_x64(True):
        x = np.asarray(x)
        g = numerical_gradient(f, jnp.asarray(x), method=method)
        exact = p.deriv()(x)
        scale = np.abs(p.deriv().coef).sum() * 2.0**4 + np.abs(c).sum() * 2.0**5
        np.testing.assert_allclose(g, exact, rtol=0, atol=ACCURACY[method](2.2e-16) * scale)


# --- the seed's estimator ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("f", "x0"),
    [
        (function_2, [-3.0, 4.0]),
        (function_2, [0.123456789, -2.718281828]),
        (functions.rosenbrock, [-1.2, 1.0]),
        (lambda x: jnp.sin(x[0]) * jnp.exp(x[1]) / (1 + x[0] ** 2), [0.7, -0.3]),
    ],
)
def test_central_with_step_1e4_is_the_seed_estimator_bit_for_bit(f, x0):
    # The same values of f give the same gradient to the last bit: x +- h, the difference and the
    # division by 2 h are the seed's floating-point operations. The seed loop evaluates f with XLA
    # too (jitted), because XLA contracts a * b + c into one fused multiply-add where NumPy rounds
    # twice; with f in NumPy the two agree to that rounding only.
    with jax.enable_x64(True):
        jitted = jax.jit(f)
        seed = seed_numerical_gradient(lambda x: float(jitted(x)), np.array(x0))
        ours = np.asarray(numerical_gradient(f, jnp.array(x0), step=1e-4))
        assert ours.dtype == np.float64
        np.testing.assert_array_equal(ours, seed)
        inside_jit = jax.jit(lambda x: numerical_gradient(f, x, step=1e-4))(jnp.array(x0))
        np.testing.assert_array_equal(np.asarray(inside_jit), seed)


def test_seed_example_in_numpy():
    with jax.enable_x64(True):
        seed = seed_numerical_gradient(function_2, np.array([-3.0, 4.0]))
        ours = numerical_gradient(function_2, jnp.array([-3.0, 4.0]), step=1e-4)
        np.testing.assert_allclose(ours, seed, rtol=1e-10)
        np.testing.assert_allclose(ours, [-6.0, 8.0], rtol=1e-10)


# --- directional derivatives ----------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_directional_derivative_is_the_gradient_along_v(method):
    with jax.enable_x64(True):
        x = as_dtype(MIXED_POINT, "float64")
        v = jax.tree.map(lambda a: jnp.cos(3 * a + 1), x)
        pairs = zip(jax.tree.leaves(mixed_grad(x)), jax.tree.leaves(v), strict=True)
        expected = sum(jnp.vdot(g, d) for g, d in pairs)
        d = directional_derivative(mixed, x, v, method=method)
        np.testing.assert_allclose(d, expected, rtol=ACCURACY[method](2.2e-16))


def test_directional_derivative_of_the_gradient_is_a_hessian_vector_product():
    with jax.enable_x64(True):
        x = jnp.asarray(ROSENBROCK_POINT)
        v = jnp.array([1.0, -2.0, 0.5, 3.0])
        hvp = directional_derivative(jax.grad(functions.rosenbrock), x, v, method="richardson")
        np.testing.assert_allclose(hvp, jax.hessian(functions.rosenbrock)(x) @ v, rtol=1e-10)


# --- tracing, chunking, scale -----------------------------------------------------------------


def test_works_on_traced_x_inside_jit_scan_and_vmap():
    f = functions.rosenbrock
    x0 = jnp.array([-1.2, 1.0, 0.3])
    eager = numerical_gradient(f, x0)
    np.testing.assert_array_equal(jax.jit(lambda x: numerical_gradient(f, x))(x0), eager)

    def descend(grad, x):
        def step(x, _):
            return x - 1e-4 * grad(x), None

        return jax.lax.scan(step, x, length=20)[0]

    with jax.enable_x64(True):
        x64 = x0.astype(jnp.float64)
        by_fd = jax.jit(
            lambda x: descend(lambda y: numerical_gradient(f, y, method="richardson"), x)
        )
        by_ad = jax.jit(lambda x: descend(jax.grad(f), x))
        assert by_fd(x64).dtype == jnp.float64
        np.testing.assert_allclose(by_fd(x64), by_ad(x64), rtol=1e-10)

    points = jnp.stack([x0, 2 * x0, -x0])
    batched = jax.vmap(lambda x: numerical_gradient(f, x))(points)
    np.testing.assert_array_equal(batched, jnp.stack([numerical_gradient(f, p) for p in points]))


def test_chunked_equals_unchunked():
    x = as_dtype(MIXED_POINT, "float32")
    whole = numerical_gradient(mixed, x, method="richardson", chunk_size=12)  # 10 in one batch
    for chunk_size in (1, 4, None):  # 4 leaves a padded last chunk
        chunked = numerical_gradient(mixed, x, method="richardson", chunk_size=chunk_size)
        for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(whole), strict=True):
            # the same values up to float32 rounding, which Richardson's differences amplify:
            # bitwise with XLA's default code generation, not with the tests' cheaper LLVM
            # passes (conftest), where batches of other sizes round differently. A misplaced
            # or lost chunk is off by O(1).
            np.testing.assert_allclose(a, b, rtol=1e-4)


def test_a_100000_dimensional_input_runs_in_chunks():
    # Every one of the 100,000 coordinates is perturbed and f evaluated, chunk by chunk; f reads
    # only every 1000th coordinate, so XLA slices before it computes and the test stays fast.
    n = 100_000

    def f(x):
        return jnp.sum(x[::1000] ** 2) + 3.0 * x[-1]

    x = jnp.linspace(-1.0, 1.0, n)
    g = numerical_gradient(f, x, chunk_size=512)
    expected = jnp.zeros(n).at[::1000].set(2 * x[::1000]).at[-1].add(3.0)
    eps = float(jnp.finfo(jnp.float32).eps)
    rounding = 4 * eps * abs(float(f(x))) / eps ** (1 / 3)  # of f's values, over the step h
    np.testing.assert_allclose(g, expected, rtol=0, atol=rounding)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(method="secant"), ValueError, "method must be one of 'central'.*got method='secant'"),
        (dict(step=-0.1), ValueError, "step must be positive and finite, got step=-0.1"),
        (dict(step=0.0), ValueError, "step=0.0"),
        (dict(step=float("nan")), ValueError, "step=nan"),
        (dict(step=float("inf")), ValueError, "step=inf"),
        (dict(step="1e-4"), TypeError, "step must be a positive real number or None"),
        (dict(chunk_size=0), ValueError, "chunk_size must be a positive integer, got chunk_size=0"),
        (dict(chunk_size=2.5), ValueError, "chunk_size=2.5"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        numerical_gradient(cube, jnp.ones(3), **kwargs)


@pytest.mark.parametrize(
    ("f", "x", "error", "match"),
    [
        (lambda x: x**2, jnp.ones(3), ValueError, "f must return a scalar, got output of shape"),
        (cube, jnp.arange(3), TypeError, "x must hold floating-point arrays.*int32"),
        (cube, jnp.array([True, False]), TypeError, "x must hold floating-point arrays.*bool"),
        (cube, {}, ValueError, "x must contain at least one array"),
        (cube, jnp.ones(3) + 1j, TypeError, "complex64"),
        ("cube", jnp.ones(3), TypeError, "f must be callable"),
    ],
)
def test_bad_functions_and_points_are_named(f, x, error, match):
    with pytest.raises(error, match=match):
        numerical_gradient(f, x)


def test_a_direction_that_does_not_match_x_is_named():
    with pytest.raises(ValueError, match="v must have the structure and shapes of x"):
        directional_derivative(cube, jnp.ones(3), jnp.ones(4))
    with pytest.raises(ValueError, match="method must be one of"):
        directional_derivative(cube, jnp.ones(3), jnp.ones(3), method="five_point")


def test_a_stencil_past_a_domain_edge_warns_instead_of_a_silent_nan():
    with pytest.warns(RuntimeWarning, match=r"not finite at 1 of 1 entries[\s\S]*edge of f's"):
        assert np.isnan(numerical_gradient(jnp.log, 1e-3, method="richardson"))
    with pytest.warns(RuntimeWarning, match=r"directional_derivative: [\s\S]*edge of f's"):
        directional_derivative(jnp.log, 1e-3, 1.0, method="richardson")
    with pytest.warns(RuntimeWarning, match=r"f\(x\) = nan itself"):
        numerical_gradient(jnp.log, -1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert numerical_gradient(jnp.log, 1e-3, step=1e-5) == pytest.approx(1e3, rel=1e-3)
