"""Gradient checks: wrong rules caught and located, right ones passed, kinks and NaNs named."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gdjax import functions
from gdjax.check import assert_grads_close, check_grads


def sin_times_x(x):
    return jnp.sum(jnp.sin(x) * x)


def custom_sin_times_x(wrong_at=None, factor=1.5):
    """``sum(sin(x) x)`` with a hand-written VJP, wrong by ``factor`` in coordinate ``wrong_at``."""

    @jax.custom_vjp
    def f(x):
        return sin_times_x(x)

    def fwd(x):
        return f(x), x

    def bwd(x, g):
        d = jnp.sin(x) + x * jnp.cos(x)
        if wrong_at is not None:
            d = d.at[wrong_at].multiply(factor)
        return (g * d,)

    f.defvjp(fwd, bwd)
    return f


# --- wrong and right hand-written derivatives ---------------------------------------------------


def test_a_wrong_custom_vjp_is_caught_at_its_coordinate():
    report = check_grads(custom_sin_times_x(wrong_at=3), jnp.linspace(-1.0, 1.0, 8))
    assert not report.ok
    assert report.kind == "wrong gradient"
    assert report.comparison == "reverse mode vs finite differences"
    assert report.mode == "full"
    assert (report.leaf, report.index) == ("", (3,))
    x3 = float(jnp.linspace(-1.0, 1.0, 8)[3])
    right = np.sin(x3) + x3 * np.cos(x3)  # in float64
    assert report.finite_diff == pytest.approx(right, rel=1e-9)
    assert report.autodiff == pytest.approx(1.5 * right, rel=1e-6)
    assert report.rel_error == pytest.approx(0.5, rel=1e-5)
    text = str(report)
    for part in (
        "WRONG GRADIENT",
        "x at index (3,)",
        "autodiff",
        "finite diff",
        "abs error",
        "rel error",
        "richardson",
        "float64",
        "float32",
        "custom_vjp",
    ):
        assert part in text


def test_a_right_custom_vjp_passes_in_one_line():
    assert_grads_close(custom_sin_times_x(), jnp.linspace(-1.0, 1.0, 8))


def test_assert_grads_close_raises_with_the_report():
    with pytest.raises(AssertionError, match=r"WRONG GRADIENT[\s\S]*x at index \(5,\)"):
        assert_grads_close(custom_sin_times_x(wrong_at=5), jnp.linspace(-1.0, 1.0, 8))


def test_the_wrong_leaf_of_a_pytree_is_named():
    wrong = custom_sin_times_x(wrong_at=1, factor=-1.0)

    def loss(p):
        return jnp.sum(p["w"] ** 2 * p["b"][0]) + wrong(p["b"][1])

    params = {"w": jnp.ones((2, 3)), "b": (jnp.float32(0.5), jnp.linspace(0.1, 0.9, 4))}
    report = check_grads(loss, params)
    assert (report.kind, report.leaf, report.index) == ("wrong gradient", "['b'][1]", (1,))
    assert "x['b'][1] at index (1,)" in str(report)


def test_a_small_error_is_caught_in_float64_and_a_one_percent_error_in_float32():
    x = jnp.linspace(-1.0, 1.0, 8)
    assert not check_grads(custom_sin_times_x(wrong_at=2, factor=1.01), x).ok
    with jax.enable_x64(True):
        x64 = jnp.linspace(-1.0, 1.0, 8, dtype=jnp.float64)
        report = check_grads(custom_sin_times_x(wrong_at=2, factor=1 + 1e-6), x64)
        assert (report.kind, report.index, report.ad_dtype) == ("wrong gradient", (2,), "float64")
        assert check_grads(sin_times_x, x64).ok


def test_forward_mode_is_checked_and_skipped_with_a_note_for_custom_vjp():
    @jax.custom_jvp
    def cube(x):
        return x**3

    cube.defjvp(lambda p, t: (p[0] ** 3, 2 * p[0] ** 2 * t[0]))  # should be 3 x^2

    x = jnp.array([0.5, -1.0, 2.0])
    report = check_grads(lambda x: jnp.sum(cube(x)), x, modes=("fwd",))
    assert (report.kind, report.comparison) == (
        "wrong gradient",
        "forward mode vs finite differences",
    )
    report = check_grads(custom_sin_times_x(), x)
    assert report.ok and "forward mode not checked: f uses jax.custom_vjp" in str(report)
    with pytest.raises(TypeError, match="custom_vjp"):
        check_grads(custom_sin_times_x(), x, modes=("fwd",))


# --- float32 is not falsely failed --------------------------------------------------------------


def family(p):
    """Smooth functions with cancellation, products, exp/log, at any scale ``p['s']``."""
    x, c, s = p["x"], p["c"], p["s"]
    return s * (
        jnp.sum(c[0] * x**3 + c[1] * x**2)
        + jnp.sum(jnp.exp(jnp.sin(c[2] * x)))
        + jnp.log1p(jnp.sum(x**2))
        + (jnp.sum(x) ** 2 - jnp.sum(x**2))  # cancels
        + jnp.tanh(c[0] * jnp.sum(x)) * jnp.sum(x**2)
    )


@settings(max_examples=12, deadline=None)
@given(
    x=st.lists(st.floats(-1, 1), min_size=6, max_size=6),
    c=st.lists(st.floats(-2, 2), min_size=3, max_size=3),
    log_x_scale=st.floats(-3, 3),
    log_s=st.floats(-8, 8),
    full=st.booleans(),
)
def test_right_float32_functions_pass_at_any_scale(x, c, log_x_scale, log_s, full):
    p = {
        "x": jnp.asarray(np.array(x) * 10.0**log_x_scale, jnp.float32),
        "c": jnp.asarray(c, jnp.float32),
        "s": jnp.float32(10.0**log_s),
    }
    report = check_grads(family, p, full_threshold=100 if full else 0)
    assert report.ok, str(report)


# --- kinks and non-finite values ----------------------------------------------------------------


def test_abs_at_zero_is_a_kink_not_a_wrong_gradient():
    report = check_grads(lambda x: jnp.sum(jnp.abs(x)), jnp.array([1.0, 0.0, -2.0]))
    assert (report.ok, report.kind, report.index) == (False, "not differentiable", (1,))
    assert "right 1.000000e+00, left -1.000000e+00" in str(report)


@pytest.mark.parametrize(
    "f", [lambda x: jnp.sqrt(x[0] ** 2 + x[1] ** 2), functions.ackley], ids=["norm", "ackley"]
)
def test_a_cone_tip_is_a_kink_even_where_autodiff_gives_nan(f):
    report = check_grads(f, jnp.zeros(2))
    assert np.isnan(report.autodiff)  # 0 * inf in the chain rule
    assert report.kind == "not differentiable"
    assert "a kink" in str(report)


def test_smooth_functions_have_no_kinks_even_where_the_gradient_vanishes():
    for f, x in [
        (functions.rosenbrock, jnp.ones(2)),
        (lambda x: jnp.sum(x**4), jnp.zeros(3)),
        (functions.sphere, jnp.zeros(2)),
    ]:
        assert check_grads(f, x).kind == "ok"


def test_non_finite_value_and_gradient_are_reported():
    report = check_grads(lambda x: jnp.sum(jnp.log(x)), jnp.array([1.0, -1.0]))
    assert (report.kind, report.comparison) == ("non-finite", "value of f")
    assert "f(x) = nan" in str(report)
    report = check_grads(custom_sin_times_x(wrong_at=2, factor=jnp.nan), jnp.linspace(-1, 1, 5))
    assert (report.kind, report.index) == ("non-finite", (2,))


# --- large inputs: random directions, then bisection --------------------------------------------


def test_a_wrong_coordinate_of_a_100000_dimensional_function_is_located():
    n, wrong = 100_000, 77_777
    f, x = custom_sin_times_x(wrong_at=wrong), jnp.linspace(-1.0, 1.0, n)
    report = check_grads(f, x)  # about 1 s on 2 cores: benchmarks/bench_check.py times it
    assert (report.mode, report.kind, report.index) == ("directions", "wrong gradient", (wrong,))
    xi = float(x[wrong])
    right = np.sin(xi) + xi * np.cos(xi)
    # f sums 100,000 terms, so the rounding of its values dominates the estimated error.
    assert abs(report.finite_diff - right) <= report.fd_error < 1e-5
    assert "localised by bisection" in str(report)
    assert check_grads(custom_sin_times_x(), x).ok


def test_the_directions_mode_locates_a_kink_and_a_wrong_leaf():
    x = {"a": jnp.linspace(-1.0, 1.0, 50), "b": jnp.linspace(0.5, 2.0, 30).at[17].set(0.0)}
    report = check_grads(
        lambda p: jnp.sum(p["a"] ** 2) + jnp.sum(jnp.abs(p["b"])), x, full_threshold=0
    )
    assert (report.kind, report.leaf, report.index) == ("not differentiable", "['b']", (17,))
    wrong = custom_sin_times_x(wrong_at=11)
    report = check_grads(lambda p: jnp.sum(p["a"] ** 2) + wrong(p["b"]), x, full_threshold=0)
    assert (report.kind, report.leaf, report.index) == ("wrong gradient", "['b']", (11,))


# --- second order -------------------------------------------------------------------------------


def test_order_2_catches_a_wrong_second_derivative_that_order_1_misses():
    @jax.custom_jvp
    def sin(x):
        return jnp.sin(x)

    @sin.defjvp
    def sin_jvp(primals, tangents):
        (x,), (dx,) = primals, tangents
        return jnp.sin(x), jax.lax.stop_gradient(jnp.cos(x)) * dx  # right value, no derivative

    def f(p):
        return jnp.sum(sin(p["w"]) * p["b"]) + jnp.sum(p["w"] ** 2)

    x = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.float32(1.5)}
    assert check_grads(f, x).ok
    report = check_grads(f, x, order=2)
    assert report.kind == "wrong gradient"
    assert report.comparison == "Hessian-vector product vs finite differences of the gradient"
    assert report.direction is not None and "random direction" in str(report)
    right = lambda p: jnp.sum(jnp.sin(p["w"]) * p["b"]) + jnp.sum(p["w"] ** 2)  # noqa: E731
    assert check_grads(right, x, order=2).ok


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(fd_method="secant"), ValueError, "method must be one of .*got method='secant'"),
        (dict(step=-1e-3), ValueError, "step must be positive and finite, got step=-0.001"),
        (dict(rtol=-1.0), ValueError, "rtol must be finite and >= 0, got rtol=-1.0"),
        (dict(rtol=float("nan")), ValueError, "rtol=nan"),
        (dict(rtol="tight"), TypeError, "rtol must be a real number or None"),
        (dict(atol=-1e-9), ValueError, "atol must be finite and >= 0"),
        (dict(order=3), ValueError, "order must be 1 or 2, got order=3"),
        (
            dict(modes=("reverse",)),
            ValueError,
            r"modes must be a non-empty subset of \('rev', 'fwd'\)",
        ),
        (dict(modes=()), ValueError, "modes=()"),
        (dict(fd_dtype="float16"), ValueError, "fd_dtype must be 'float32' or 'float64'"),
        (dict(n_directions=0), ValueError, "n_directions must be a positive integer"),
        (dict(full_threshold=-1), ValueError, "full_threshold must be a non-negative integer"),
        (dict(seed=1.5), TypeError, "seed must be an integer, got seed=1.5"),
        (dict(order=2, fd_method="complex_step"), ValueError, "order=2 differences jax.grad"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        check_grads(sin_times_x, jnp.ones(3), **kwargs)


@pytest.mark.parametrize(
    ("f", "x", "error", "match"),
    [
        (lambda x: x**2, jnp.ones(3), ValueError, "f must return a scalar"),
        (sin_times_x, jnp.arange(3), TypeError, "x must hold floating-point arrays"),
        (sin_times_x, [], ValueError, "x must contain at least one array"),
        (None, jnp.ones(3), TypeError, "f must be callable"),
    ],
)
def test_bad_functions_and_points_are_named(f, x, error, match):
    with pytest.raises(error, match=match):
        check_grads(f, x)


def test_the_jax_style_call_shows_the_right_one_and_a_tuple_point_still_works():
    with pytest.raises(TypeError, match=r"call check_grads\(f, x\[0\]\)"):
        check_grads(sin_times_x, (jnp.linspace(-1.0, 1.0, 4),))
    point = (jnp.ones(2), jnp.ones(2))
    assert check_grads(lambda t: jnp.sum(t[0] * t[1]), point, modes=("rev",)).ok


def test_a_domain_edge_inside_the_stencil_is_stepped_over_or_named():
    f = lambda x: jnp.sum(jnp.log(x))  # noqa: E731
    report = check_grads(f, jnp.array([1e-5, 1.0]), modes=("rev",))  # the step 1.2e-4 passes 0
    assert report.ok and "rechecked where f is smooth on the stencil, 1 at 1/256" in str(report)
    report = check_grads(f, jnp.array([1e-9, 1.0]), modes=("rev",))  # so does 1/256 of it
    assert (report.kind, report.index) == ("non-finite", (0,))
    assert "the finite differences are not finite" in str(report)
