"""Tests of gdjax.functions: stated minima, closed-form values, jit/vmap, dtypes, registry."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdjax import functions

F = functions

# (function, n): every minimising function, the any-n ones in two dimensions and in another.
MINIMISING = [
    (F.sphere, 2), (F.sphere, 5), (F.function_2, 2),
    (F.rosenbrock, 2), (F.rosenbrock, 7),
    (F.rastrigin, 2), (F.rastrigin, 4),
    (F.ackley, 2), (F.ackley, 3),
    (F.styblinski_tang, 2), (F.styblinski_tang, 6),
    (F.beale, 2), (F.booth, 2), (F.matyas, 2), (F.himmelblau, 2),
    (F.three_hump_camel, 2), (F.goldstein_price, 2),
]
SADDLES = [F.saddle, F.monkey_saddle]


def _id(case):
    f, n = case
    return f"{f.name}-n{n}"


@functools.cache
def _at_minimizers():
    """Per case of MINIMISING: (f in n-D, and in float64 at its minimisers: values, gradients,
    values at 128 nearby points at distances ~1e-3 and ~1e-5).

    One compiled program for all cases keeps the suite fast.
    """
    cases = [f.in_dim(n) for f, n in MINIMISING]
    with jax.enable_x64(True):

        @jax.jit
        def at(points):
            out = []
            for g, xs in zip(cases, points, strict=True):
                n = xs.shape[1]
                dirs = jax.random.normal(jax.random.key(n), (64, n), dtype=jnp.float64)
                dirs = jnp.concatenate([1e-3 * dirs, 1e-5 * dirs])
                nearby = jax.vmap(g)((xs[:, None] + dirs).reshape(-1, n))
                out.append((jax.vmap(g)(xs), jax.vmap(jax.grad(g))(xs), nearby))
            return out

        results = at([jnp.asarray(g.minimizers) for g in cases])
        return {
            case: (g, *(np.asarray(r, dtype=np.float64) for r in result))
            for case, g, result in zip(MINIMISING, cases, results, strict=True)
        }


@pytest.mark.parametrize("case", MINIMISING, ids=_id)
def test_value_at_minimizers_is_the_minimum(case):
    f, values, _, _ = _at_minimizers()[case]
    np.testing.assert_allclose(values, f.minimum, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("case", [c for c in MINIMISING if c[0] is not F.ackley], ids=_id)
def test_gradient_vanishes_at_minimizers(case):
    _, _, grads, _ = _at_minimizers()[case]
    np.testing.assert_array_less(np.abs(grads), 1e-11)


def test_ackley_is_a_cone_at_its_minimizer():
    # Near 0, f(x) ~ 20 * 0.2 * ||x|| / sqrt(n): the gradient has norm 4 / sqrt(n) however close
    # x is to 0, and at 0 itself autodiff meets 0 * inf (the docstring promises NaN).
    with jax.enable_x64(True):
        for n in (2, 3):
            grad = jax.jit(jax.grad(F.ackley))
            assert bool(jnp.all(jnp.isnan(grad(jnp.zeros(n)))))
            x = jnp.full(n, 1e-9)
            np.testing.assert_allclose(jnp.linalg.norm(grad(x)), 4 / math.sqrt(n), rtol=1e-6)


@pytest.mark.parametrize("case", MINIMISING, ids=_id)
def test_minimizers_are_local_minima(case):
    f, _, _, nearby = _at_minimizers()[case]
    assert nearby.min() >= f.minimum - 1e-14 * max(1.0, abs(f.minimum))


def test_himmelblau_minimizers_are_four_distinct_points():
    xs = F.himmelblau.minimizers
    assert xs.shape == (4, 2)
    distances = np.linalg.norm(xs[:, None] - xs[None], axis=-1)
    assert np.all(distances[np.triu_indices(4, k=1)] > 1.0)


def test_styblinski_tang_minimum_is_one_coordinate_minimum_times_n():
    # Independent check of the hard-coded root: 4 t^3 - 32 t + 5 = 0 by numpy's eigenvalue solver.
    t = min(np.roots([4.0, 0.0, -32.0, 5.0]).real)
    m = 0.5 * (t**4 - 16 * t**2 + 5 * t)
    for n in (1, 2, 7):
        g = F.styblinski_tang.in_dim(n)
        np.testing.assert_allclose(g.minimizers, np.full((1, n), t), rtol=1e-15)
        np.testing.assert_allclose(g.minimum, n * m, rtol=1e-14)


CLOSED_FORM = [
    (F.sphere, [-3.0, 4.0], 25.0),
    (F.sphere, [1.0, 2.0, 3.0], 14.0),
    (F.function_2, [-3.0, 4.0], 25.0),
    (F.rosenbrock, [0.0, 0.0], 1.0),
    (F.rosenbrock, [-1.2, 1.0], 100 * (1 - 1.2**2) ** 2 + 2.2**2),
    (F.rosenbrock, [0.0, 0.0, 0.0], 2.0),
    (F.rosenbrock, [1.0, 2.0, 1.0], 100 * 1 + 100 * (1 - 4) ** 2 + 1),
    (F.beale, [0.0, 0.0], 1.5**2 + 2.25**2 + 2.625**2),
    (F.beale, [1.0, 2.0], 2.5**2 + 5.25**2 + 9.625**2),
    (F.booth, [0.0, 0.0], 49.0 + 25.0),
    (F.matyas, [1.0, 1.0], 0.04),
    (F.matyas, [1.0, -1.0], 1.0),
    (F.himmelblau, [0.0, 0.0], 121.0 + 49.0),
    (F.rastrigin, [0.5, 0.5], 20 + 2 * (0.25 + 10)),
    (F.rastrigin, [1.0, 1.0, 1.0], 30 + 3 * (1 - 10)),
    (F.ackley, [1.0, 1.0], 20 - 20 * math.exp(-0.2)),
    (F.ackley, [0.5, 0.0], -20 * math.exp(-0.2 * math.sqrt(0.125)) - 1 + 20 + math.e),
    (F.styblinski_tang, [1.0, 1.0], -10.0),
    (F.styblinski_tang, [0.0, 2.0, -1.0], 0.5 * ((16 - 64 + 10) + (1 - 16 - 5))),
    (F.three_hump_camel, [1.0, 1.0], 2 - 1.05 + 1 / 6 + 1 + 1),
    (F.goldstein_price, [0.0, 0.0], (1 + 19) * 30),
    (F.goldstein_price, [1.0, 1.0], (1 + 9 * 3) * (30 + 1 * 37)),
    (F.saddle, [1.0, 2.0], -3.0),
    (F.monkey_saddle, [1.0, 1.0], -2.0),
    (F.monkey_saddle, [2.0, -1.0], 8.0 - 6.0),
]


@pytest.mark.parametrize(
    "f, x, expected", CLOSED_FORM, ids=[f"{f.name}-{x}" for f, x, _ in CLOSED_FORM]
)
def test_value_matches_closed_form(f, x, expected):
    with jax.enable_x64(True):
        np.testing.assert_allclose(float(f(jnp.array(x))), expected, rtol=1e-14, atol=1e-14)


def test_jit_of_vmap_and_batched_call_agree_with_a_loop():
    points = {}
    for name, f in F.ALL.items():
        lo, hi = np.array(f.domain).T
        points[name] = jax.random.uniform(jax.random.key(1), (4, len(lo)), minval=lo, maxval=hi)
    batched = jax.jit(lambda pts: {k: jax.vmap(F.ALL[k])(xs) for k, xs in pts.items()})(points)
    for name, f in F.ALL.items():
        xs = points[name]
        loop = jnp.stack([f(x) for x in xs])
        np.testing.assert_allclose(batched[name], loop, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(f(xs), loop, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("f", list(F.ALL.values()), ids=list(F.ALL))
def test_dtype_follows_input(f):
    def dtype(fn, dt):
        return jax.eval_shape(fn, jax.ShapeDtypeStruct(f.start.shape, dt)).dtype

    assert dtype(f, jnp.float32) == jnp.float32
    assert dtype(f, jnp.int32) == jnp.float32
    with jax.enable_x64(True):
        assert dtype(f, jnp.float64) == jnp.float64
        assert dtype(f, jnp.int64) == jnp.float64
        assert dtype(jax.grad(f), jnp.float64) == jnp.float64


def test_complex_step_derivative_matches_grad():
    # The module promises complex input works (for complex-step finite differences).
    h = 1e-30

    def both(f, x):
        eye = jnp.eye(x.shape[0], dtype=x.dtype)
        return jax.vmap(lambda e: f(x + 1j * h * e).imag / h)(eye), jax.grad(f)(x)

    with jax.enable_x64(True):
        points = {name: jnp.asarray(f.start) + 0.1 for name, f in F.ALL.items()}
        results = jax.jit(lambda pts: {k: both(F.ALL[k], x) for k, x in pts.items()})(points)
        for name, (cs, grad) in results.items():
            np.testing.assert_allclose(cs, grad, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("f", SADDLES, ids=lambda f: f.name)
def test_saddles_are_stationary_but_not_minima(f):
    assert f.minimizers.shape == (0, 2)
    assert f.minimum == -math.inf
    assert f.stationary_points.shape == (1, 2)
    with jax.enable_x64(True):
        p = jnp.asarray(f.stationary_points[0])
        np.testing.assert_array_equal(jax.grad(f)(p), 0.0)
        dirs = jax.random.normal(jax.random.key(2), (64, 2), dtype=jnp.float64)
        assert float(jnp.min(jax.vmap(f)(p + 1e-3 * dirs))) < float(f(p))
        # Unbounded below along a ray: saddle(0, t) = -t^2, monkey_saddle(-t, 0) = -t^3.
        ray = jnp.array([0.0, 1.0]) if f is F.saddle else jnp.array([-1.0, 0.0])
        assert float(f(1e6 * ray)) <= -1e12


def test_registry():
    assert set(F.ALL) == {
        "sphere", "function_2", "rosenbrock", "beale", "booth", "matyas", "himmelblau",
        "rastrigin", "ackley", "styblinski_tang", "three_hump_camel", "goldstein_price",
        "saddle", "monkey_saddle",
    }
    for name, f in F.ALL.items():
        assert f.name == name
        assert F.get(name) is f
        assert f.start.shape == (len(f.domain),)
        assert all(lo < s < hi for s, (lo, hi) in zip(f.start, f.domain, strict=True))
        lo, hi = np.array(f.domain).T
        assert np.all((lo <= f.minimizers) & (f.minimizers <= hi))
    with pytest.raises(ValueError, match=r"name='rosenbrok'.*known: ackley, beale"):
        F.get("rosenbrok")


def test_function_2_is_the_seeds_function():
    x = jnp.array([-3.0, 4.0])
    assert float(F.function_2(x)) == float(x[0] ** 2 + x[1] ** 2) == float(F.sphere(x))
    assert F.function_2.dim == 2 and F.sphere.dim is None


def test_dimensions():
    assert F.rosenbrock.in_dim(6).start.tolist() == [-1.2, 1.0] * 3
    assert F.rosenbrock.in_dim(6) is F.rosenbrock.in_dim(6)
    assert F.beale.in_dim(2) is F.beale
    with pytest.raises(ValueError, match="n >= 2, got n=1"):
        F.rosenbrock.in_dim(1)
    with pytest.raises(ValueError, match="beale is defined in 2 dimensions only, got n=3"):
        F.beale.in_dim(3)
    with pytest.raises(ValueError, match=r"himmelblau is defined in 2 dimensions.*\(3,\)"):
        F.himmelblau(jnp.zeros(3))
    with pytest.raises(ValueError, match="scalar"):
        F.sphere(jnp.float32(1.0))


def test_metadata_are_read_only():
    with pytest.raises(ValueError, match="read-only"):
        F.rosenbrock.minimizers[0, 0] = 2.0
    with pytest.raises(AttributeError):
        F.rosenbrock.minimum = 1.0
