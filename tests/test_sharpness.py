"""Tests of gdjax.sharpness against closed forms, dense Hessians and brute-force box maxima."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from gdjax import functions
from gdjax.sharpness import (
    epsilon_sharpness,
    hessian_top_eigenvalue,
    hutchinson_trace,
    hvp,
    interpolate,
)


def _spd(eigenvalues, seed=0):
    """H = Q diag(eigenvalues) Q^T with a random orthogonal Q; returns (H, Q) in float64 NumPy."""
    n = len(eigenvalues)
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return q @ np.diag(eigenvalues) @ q.T, q


def _quadratic(h, center=None, offset=0.0):
    """f(x) = 0.5 (x - c)^T H (x - c) + offset."""
    h = jnp.asarray(h)
    c = jnp.zeros(h.shape[0]) if center is None else jnp.asarray(center)
    return lambda x: 0.5 * (x - c) @ h @ (x - c) + offset


def _box_max_of_quadratic(h, b):
    """max of 0.5 z^T H z over |z_i| <= b_i for PSD H: at a vertex, so enumerate all 2^n."""
    z = np.array(list(itertools.product([-1.0, 1.0], repeat=len(b)))) * b
    return np.max(0.5 * np.einsum("ki,ij,kj->k", z, h, z))


def _pytree_loss(params):
    w, b = params["w"], params["b"]
    return jnp.sum(jnp.tanh(w @ jnp.arange(1.0, 4.0) + b) ** 2) + jnp.sum(w**4) / 4


def _dense_hessian(x):
    """The Hessian of _pytree_loss at x as a matrix over ravel_pytree(x)."""
    x_flat, unravel = ravel_pytree(x)
    return jax.jit(jax.hessian(lambda z: _pytree_loss(unravel(z))))(x_flat)


@functools.cache
def _pytree_point(dtype=jnp.float64):
    key_w, key_b = jax.random.split(jax.random.key(3))
    return {
        "w": jax.random.normal(key_w, (2, 3), dtype) * 0.5,
        "b": jax.random.normal(key_b, (2,), dtype),
    }


# ---------------------------------------------------------------------------------------------
# Hessian-vector products


def test_hvp_equals_dense_hessian_times_v():
    with jax.enable_x64(True):
        f = functions.rosenbrock
        x = jnp.array([0.3, -1.2, 0.8, 1.5])
        v = jnp.array([1.0, 2.0, -0.5, 0.25])
        np.testing.assert_allclose(hvp(f, x, v), jax.jit(jax.hessian(f))(x) @ v, rtol=1e-12)


def test_hvp_on_a_pytree():
    with jax.enable_x64(True):
        x = _pytree_point()
        v = jax.tree.map(lambda a: jnp.cos(jnp.arange(a.size, dtype=a.dtype)).reshape(a.shape), x)
        x_flat, unravel = ravel_pytree(x)
        dense = _dense_hessian(x)
        hv = hvp(_pytree_loss, x, v)
        assert jax.tree.structure(hv) == jax.tree.structure(x)
        np.testing.assert_allclose(ravel_pytree(hv)[0], dense @ ravel_pytree(v)[0], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Top eigenvalue


def test_top_eigenvalue_of_a_quadratic():
    eigenvalues = np.array([10.0, 5.0, 2.0, 1.0, 0.5, 0.1])
    h, q = _spd(eigenvalues)
    with jax.enable_x64(True):
        x = jnp.linspace(-1.0, 1.0, 6)  # the Hessian of a quadratic is the same everywhere
        f = _quadratic(h)
        r = hessian_top_eigenvalue(f, x)
        assert bool(r.converged) and r.eigenvalue.dtype == jnp.float64
        np.testing.assert_allclose(r.eigenvalue, 10.0, rtol=1e-6)
        assert abs(float(r.eigenvalue) - 10.0) <= float(r.residual)  # Bauer-Fike
        assert float(r.residual) < 1e-3 * 10.0
        assert abs(float(r.vector @ q[:, 0])) > 1 - 1e-6
        np.testing.assert_allclose(jnp.linalg.norm(r.vector), 1.0, rtol=1e-12)

        tight = hessian_top_eigenvalue(f, x, tol=1e-13, num_iters=500)
        np.testing.assert_allclose(tight.eigenvalue, 10.0, rtol=1e-12)
        assert float(tight.residual) < 1e-5


@pytest.mark.parametrize(
    "eigenvalues, top",
    [
        ([-10.0, 3.0, 1.0, 0.5, -2.0], 3.0),  # a dominant negative eigenvalue
        ([-4.0, -1.0, -0.5, -3.0, -2.0], -0.5),  # negative definite
    ],
)
def test_top_eigenvalue_is_the_largest_not_the_largest_in_magnitude(eigenvalues, top):
    h, q = _spd(eigenvalues, seed=1)
    with jax.enable_x64(True):
        r = hessian_top_eigenvalue(_quadratic(h), jnp.zeros(5), tol=1e-12, num_iters=1000)
        assert bool(r.converged)
        np.testing.assert_allclose(r.eigenvalue, top, rtol=1e-6)
        assert abs(float(r.vector @ q[:, np.argmax(eigenvalues)])) > 1 - 1e-6


def test_top_eigenvalue_at_stationary_points_of_the_saddles():
    with jax.enable_x64(True):
        # H = diag(2, -2): plain power iteration stalls between the +- pair.
        r = hessian_top_eigenvalue(functions.saddle, jnp.zeros(2))
        np.testing.assert_allclose(r.eigenvalue, 2.0, rtol=1e-12)
        r = hessian_top_eigenvalue(functions.monkey_saddle, jnp.zeros(2))  # H = 0
        assert float(r.eigenvalue) == 0.0 and bool(r.converged)


def test_top_eigenvalue_vmapped_over_points_equals_a_loop_and_dense():
    f = functions.rosenbrock.in_dim(3)
    with jax.enable_x64(True):
        xs = jax.random.uniform(jax.random.key(4), (5, 3), jnp.float64, -1.5, 1.5)
        batched = jax.jit(jax.vmap(lambda x: hessian_top_eigenvalue(f, x)))(xs)
        loop = [hessian_top_eigenvalue(f, x) for x in xs]
        np.testing.assert_allclose(batched.eigenvalue, [r.eigenvalue for r in loop], rtol=1e-12)
        np.testing.assert_array_equal(batched.iterations, [r.iterations for r in loop])
        dense = np.linalg.eigvalsh(jax.jit(jax.vmap(jax.hessian(f)))(xs))[:, -1]
        np.testing.assert_allclose(batched.eigenvalue, dense, rtol=1e-5)


def test_top_eigenvalue_on_a_pytree_in_float32():
    x = _pytree_point(jnp.float32)
    r = hessian_top_eigenvalue(_pytree_loss, x)
    assert r.eigenvalue.dtype == jnp.float32
    assert jax.tree.structure(r.vector) == jax.tree.structure(x)
    np.testing.assert_allclose(r.eigenvalue, np.linalg.eigvalsh(_dense_hessian(x))[-1], rtol=1e-4)


def test_iteration_cap_is_honoured_and_reported():
    h, _ = _spd([1.0, 0.99, 0.5])
    r = hessian_top_eigenvalue(_quadratic(h), jnp.zeros(3), num_iters=3)
    assert int(r.iterations) <= 6 and not bool(r.converged)


# ---------------------------------------------------------------------------------------------
# Hutchinson trace


def test_hutchinson_trace():
    with jax.enable_x64(True):
        diag = jnp.array([3.0, 1.0, 0.5, 2.0])
        r = hutchinson_trace(lambda x: 0.5 * jnp.sum(diag * x**2), jnp.ones(4), 5)
        np.testing.assert_allclose(r.trace, 6.5, rtol=1e-14)  # exact: v_i^2 = 1
        assert float(r.stderr) < 1e-12

        h, _ = _spd([4.0, 3.0, 2.0, 1.0, 0.5])
        r = hutchinson_trace(_quadratic(h), jnp.zeros(5), 200, seed=1)
        assert abs(float(r.trace) - 10.5) < 5 * float(r.stderr)
        assert 0 < float(r.stderr) < 1.0


# ---------------------------------------------------------------------------------------------
# Epsilon-sharpness


def test_sharpness_of_a_diagonal_quadratic_is_the_corner_value():
    diag = np.array([4.0, 1.0, 0.25, 9.0])
    eps = 1e-3
    with jax.enable_x64(True):
        r = epsilon_sharpness(_quadratic(np.diag(diag)), jnp.zeros(4), eps)
        np.testing.assert_allclose(r.max_value, 0.5 * eps**2 * diag.sum(), rtol=1e-12)
        np.testing.assert_allclose(r.sharpness, 100 * 0.5 * eps**2 * diag.sum(), rtol=1e-12)
        assert float(r.value) == 0.0
        np.testing.assert_allclose(jnp.abs(r.perturbation), eps, rtol=1e-12)


def test_sharpness_of_a_general_quadratic_matches_brute_force_over_vertices():
    h, _ = _spd([5.0, 2.0, 1.0, 0.5, 0.1], seed=2)
    eps = 1e-3
    reference = _box_max_of_quadratic(h, np.full(5, eps))
    with jax.enable_x64(True):
        f = _quadratic(h)
        single = epsilon_sharpness(f, jnp.zeros(5), eps)
        assert 0.0 <= float(single.max_value) <= reference * (1 + 1e-12)  # a lower bound
        r = epsilon_sharpness(f, jnp.zeros(5), eps, num_starts=8)
        np.testing.assert_allclose(r.max_value, reference, rtol=1e-10)
        np.testing.assert_allclose(r.sharpness, 100 * reference, rtol=1e-10)


def test_sharpness_box_scales_with_x_and_divides_by_one_plus_f():
    # Minimum at c != 0 with value 0.3: the box is |z_i| <= eps (|c_i| + 1).
    h, _ = _spd([3.0, 1.0, 0.2], seed=5)
    c = np.array([2.0, -0.5, 10.0])
    eps = 1e-2
    reference = _box_max_of_quadratic(h, eps * (np.abs(c) + 1))
    with jax.enable_x64(True):
        r = epsilon_sharpness(_quadratic(h, c, 0.3), jnp.asarray(c), eps, num_starts=4)
        np.testing.assert_allclose(r.value, 0.3, rtol=1e-14)
        np.testing.assert_allclose(r.max_value - 0.3, reference, rtol=1e-9)
        np.testing.assert_allclose(r.sharpness, 100 * reference / 1.3, rtol=1e-9)


def test_sharpness_of_a_linear_function_is_exact():
    a = np.array([1.0, -0.01, 3.0, 0.5, -2.0])
    x = np.array([0.5, 2.0, -1.0, 0.0, 4.0])
    eps = 1e-3
    f0 = a @ x + 20.0
    rise = np.sum(np.abs(a) * eps * (np.abs(x) + 1))
    with jax.enable_x64(True):
        r = epsilon_sharpness(lambda z: jnp.asarray(a) @ z + 20.0, jnp.asarray(x), eps)
        np.testing.assert_allclose(r.max_value, f0 + rise, rtol=1e-13)
        np.testing.assert_allclose(r.sharpness, 100 * rise / (1 + f0), rtol=1e-9)
        np.testing.assert_allclose(r.perturbation, np.sign(a) * eps * (np.abs(x) + 1), rtol=1e-12)


def test_sharpness_in_an_explicit_subspace():
    rng = np.random.default_rng(6)
    a_mat = rng.normal(size=(6, 3))
    x = rng.normal(size=6)
    eps = 1e-2
    b = eps * (np.abs(np.linalg.pinv(a_mat) @ x) + 1)  # the box of the paper, in y
    g = rng.normal(size=6)
    with jax.enable_x64(True):
        # Linear f: the maximum is f(x) + sum_j |(A^T g)_j| b_j.
        r = epsilon_sharpness(lambda z: jnp.asarray(g) @ z, jnp.asarray(x), eps, subspace=a_mat)
        np.testing.assert_allclose(r.max_value - g @ x, np.abs(a_mat.T @ g) @ b, rtol=1e-10)
        # The maximiser lies in range(A), inside the box.
        y, *_ = np.linalg.lstsq(a_mat, np.asarray(r.perturbation), rcond=None)
        np.testing.assert_allclose(a_mat @ y, r.perturbation, atol=1e-14)
        assert np.all(np.abs(y) <= b * (1 + 1e-12))

        # Quadratic at 0: the maximum of 0.5 y^T (A^T H A) y over the box |y_j| <= eps.
        h, _ = _spd([4.0, 2.0, 1.0, 0.5, 0.2, 0.1], seed=7)
        reference = _box_max_of_quadratic(a_mat.T @ h @ a_mat, np.full(3, eps))
        r = epsilon_sharpness(_quadratic(h), jnp.zeros(6), eps, subspace=a_mat, num_starts=4)
        np.testing.assert_allclose(r.max_value, reference, rtol=1e-10)


def test_sharpness_in_a_random_subspace_is_reproducible():
    f = functions.rosenbrock.in_dim(5)
    with jax.enable_x64(True):
        x = jnp.ones(5) + 0.01
        r1 = epsilon_sharpness(f, x, subspace_dim=2, seed=3)
        r2 = epsilon_sharpness(f, x, subspace_dim=2, seed=3)
        r3 = epsilon_sharpness(f, x, subspace_dim=2, seed=4)
        np.testing.assert_array_equal(r1.perturbation, r2.perturbation)
        assert not np.allclose(r1.perturbation, r3.perturbation)
        assert float(r1.sharpness) > 0 and float(r1.max_value) > float(r1.value)


def test_sharpness_on_a_pytree_equals_on_its_flat_vector():
    with jax.enable_x64(True):
        x = _pytree_point()
        x_flat, unravel = ravel_pytree(x)
        tree = epsilon_sharpness(_pytree_loss, x, 1e-2, num_starts=2)
        flat = epsilon_sharpness(lambda z: _pytree_loss(unravel(z)), x_flat, 1e-2, num_starts=2)
        np.testing.assert_allclose(tree.sharpness, flat.sharpness, rtol=1e-12)
        assert jax.tree.structure(tree.perturbation) == jax.tree.structure(x)
        np.testing.assert_allclose(ravel_pytree(tree.perturbation)[0], flat.perturbation)


def test_sharpness_vmapped_over_points_and_epsilons_equals_a_loop():
    f = functions.rosenbrock
    with jax.enable_x64(True):
        xs = jnp.array([[1.0, 1.0], [0.9, 0.8], [-1.0, 1.0], [0.0, 0.0]])
        epsilons = jnp.array([1e-3, 1e-2, 5e-4, 1e-3])
        batched = jax.jit(jax.vmap(lambda x, e: epsilon_sharpness(f, x, e, num_starts=2)))(
            xs, epsilons
        )
        loop = [
            epsilon_sharpness(f, x, float(e), num_starts=2)
            for x, e in zip(xs, epsilons, strict=True)
        ]
        for name in ("sharpness", "max_value", "value", "perturbation"):
            np.testing.assert_allclose(
                getattr(batched, name), [getattr(r, name) for r in loop], rtol=1e-12
            )


# ---------------------------------------------------------------------------------------------
# Interpolation


def test_interpolate_equals_direct_evaluation():
    with jax.enable_x64(True):
        x_a = _pytree_point()
        x_b = jax.tree.map(lambda a: 1.0 - 2 * a, x_a)
        values = interpolate(_pytree_loss, x_a, x_b)
        assert values.shape == (61,)
        some = [0, 7, 20, 33, 40, 60]  # alpha = -1 + 3 i / 60
        direct = [
            _pytree_loss(jax.tree.map(lambda a, b, t=-1 + i / 20: t * b + (1 - t) * a, x_a, x_b))
            for i in some
        ]
        np.testing.assert_allclose(values[np.array(some)], direct, rtol=1e-13)
        np.testing.assert_allclose(values[20], _pytree_loss(x_a), rtol=1e-14)  # alpha = 0
        np.testing.assert_allclose(values[40], _pytree_loss(x_b), rtol=1e-14)  # alpha = 1
        line = interpolate(
            functions.sphere, jnp.zeros(2), jnp.array([3.0, 4.0]), jnp.array([0.5, 2.0])
        )
        np.testing.assert_allclose(line, [6.25, 100.0], rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# Bad input


def _sum_sq(x):
    return jnp.sum(x**2)


X = jnp.ones(3)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: epsilon_sharpness(_sum_sq, X, -0.1), ValueError,
         "epsilon must be positive, got epsilon=-0.1"),
        (lambda: epsilon_sharpness(_sum_sq, X, 0.0), ValueError, "epsilon=0.0"),
        (lambda: epsilon_sharpness(_sum_sq, X, "big"), TypeError, "epsilon='big'"),
        (lambda: epsilon_sharpness(_sum_sq, X, subspace_dim=0), ValueError, "subspace_dim=0"),
        (lambda: epsilon_sharpness(_sum_sq, X, subspace_dim=4), ValueError,
         "subspace_dim must be at most the number of parameters n=3, got subspace_dim=4"),
        (lambda: epsilon_sharpness(_sum_sq, X, subspace=jnp.ones((2, 2))), ValueError,
         r"subspace must be an \(n, p\) matrix with n=3"),
        (lambda: epsilon_sharpness(_sum_sq, X, subspace_dim=1, subspace=jnp.ones((3, 1))),
         ValueError, "not both"),
        (lambda: epsilon_sharpness(_sum_sq, X, ascent_steps=0), ValueError, "ascent_steps=0"),
        (lambda: epsilon_sharpness(_sum_sq, X, num_starts=0), ValueError, "num_starts=0"),
        (lambda: hessian_top_eigenvalue(_sum_sq, X, num_iters=0), ValueError,
         "num_iters must be a positive integer, got num_iters=0"),
        (lambda: hessian_top_eigenvalue(_sum_sq, X, tol=-1e-6), ValueError,
         "tol must be positive, got tol=-1e-06"),
        (lambda: hutchinson_trace(_sum_sq, X, 0), ValueError, "num_samples=0"),
        (lambda: hessian_top_eigenvalue(lambda x: x**2, X), ValueError,
         r"f must return a scalar, got output of shape \(3,\)"),
        (lambda: epsilon_sharpness(lambda x: x**2, X), ValueError, "f must return a scalar"),
        (lambda: hvp(lambda x: x**2, X, X), ValueError, "f must return a scalar"),
        (lambda: hessian_top_eigenvalue(_sum_sq, jnp.arange(3)), TypeError,
         "x must hold floating-point arrays"),
        (lambda: epsilon_sharpness(_sum_sq, jnp.arange(3)), TypeError,
         "x must hold floating-point arrays"),
        (lambda: hvp(_sum_sq, X, jnp.ones(2)), ValueError, "v must have the structure"),
        (lambda: interpolate(_sum_sq, X, jnp.ones(4)), ValueError, "x_b must have the structure"),
        (lambda: interpolate(_sum_sq, jnp.arange(3), X), TypeError, "x_a must hold floating"),
        (lambda: interpolate(_sum_sq, X, X, jnp.ones((2, 2))), ValueError,
         r"alphas must be a 1-D array, got alphas with shape \(2, 2\)"),
    ],
)
def test_bad_input_raises_naming_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
