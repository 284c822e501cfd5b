"""minimize and fit as JAX functions: under jax.jit, jax.vmap (== sweep) and jax.grad (== finite
differences of the same quantity)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import regression_problem
from regression_problem import linear_loss

import gdjax
from gdjax import Status, functions

A = jnp.array([1.0, 4.0])  # curvatures: plain GD diverges for lr > 2 / 4 = 0.5


def bowl(x):
    return 0.5 * jnp.sum(A * x**2)


def walled(f, radius=50.0):
    """``f`` inside a box, ``inf`` outside: Adam, whose steps are bounded, diverges too."""
    return lambda p: jnp.where(
        jnp.all(jnp.stack([jnp.all(jnp.abs(a) < radius) for a in jax.tree.leaves(p)])),
        f(p), jnp.inf)


NAMES = ["sgd", "momentum", "adam"]
# For each optimiser, learning rates that converge, run out of steps and diverge.
LRS = {
    "sgd": [0.3, 0.01, 0.6],
    "momentum": [0.1, 0.001, 2.0],
    "adam": [0.1, 1e-4, 100.0],
}
KW = dict(steps=200, tol=1e-4, record_every=9)
WALL = walled(bowl)


def assert_same(got, want, i=None, rtol=1e-6):
    """Every field of two results (of config ``i`` of ``got`` when given)."""
    pick = (lambda a: a) if i is None else (lambda a: np.asarray(a)[i])
    for name in ("status", "steps", "diverged_at"):
        assert int(pick(getattr(got, name))) == int(getattr(want, name)), (i, name)
    for name in ("params", "loss", "best_loss", "grad_norm"):
        for a, b in zip(jax.tree.leaves(jax.tree.map(pick, getattr(got, name))),
                        jax.tree.leaves(getattr(want, name)), strict=True):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-9, err_msg=f"{i} {name}")
    for name in ("step", "loss", "grad_norm"):
        np.testing.assert_allclose(pick(getattr(got.history, name)),
                                   getattr(want.history, name), rtol=rtol, atol=1e-9,
                                   err_msg=f"{i} history.{name}")


@pytest.mark.parametrize("name", NAMES)
def test_minimize_under_jit_equals_eager(name):
    x0 = jnp.array([1.0, -2.0])
    jitted = jax.jit(lambda x, lr: gdjax.minimize(WALL, x, name, learning_rate=lr, **KW))
    for lr in LRS[name]:
        eager = gdjax.minimize(WALL, x0, name, learning_rate=lr, **KW)
        traced = jitted(x0, lr)
        assert isinstance(eager.status, Status) and not isinstance(traced.status, Status)
        assert_same(traced, eager)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_of_minimize_equals_sweep_with_every_status(name):
    lrs = np.asarray(LRS[name], np.float32)
    x0 = np.float32([1.0, -2.0])
    batched = jax.vmap(lambda lr: gdjax.minimize(WALL, x0, name, learning_rate=lr, **KW))(lrs)
    res = gdjax.sweep(WALL, x0, name, grid={"learning_rate": lrs}, **KW)
    assert res.status.names().tolist() == ["converged", "max_steps", "diverged"]
    for i in range(len(lrs)):
        assert_same(batched, res.result(i), i)
    # and a vmap over starts
    starts = np.float32([[1.0, -2.0], [0.0, 0.0], [3.0, 1.0]])
    by_start = jax.vmap(lambda x: gdjax.minimize(WALL, x, name, learning_rate=lrs[0], **KW))(
        starts)
    res = gdjax.sweep(WALL, x0, name, learning_rate=float(lrs[0]), grid={"x0": starts}, **KW)
    for i in range(len(starts)):
        assert_same(by_start, res.result(i), i)


@pytest.mark.parametrize("name", NAMES)
def test_grad_through_minimize_equals_finite_differences(name):
    # The hypergradient d loss(x_T) / d lr and the gradient with respect to the start, in
    # float64, against gdjax.numerical_gradient (Richardson) of the same function. Both in one
    # jax.grad and one numerical_gradient of the pair (lr, x0): one program each, not two.
    lr = {"sgd": 0.1, "momentum": 0.02, "adam": 0.05}[name]
    with jax.enable_x64(True):
        point = (jnp.float64(lr), jnp.array([1.0, -2.0]))

        def final(point):
            lr, x0 = point
            return gdjax.minimize(bowl, x0, name, learning_rate=lr, steps=40,
                                  record_every=40).loss

        # the loss is a polynomial of degree ~80 in lr: steps of 1e-4 (lr's scale, not 1's)
        auto_lr, auto_start = jax.grad(final)(point)
        fd_lr, fd_start = gdjax.numerical_gradient(final, point, method="richardson", step=1e-4)
        np.testing.assert_allclose(auto_lr, fd_lr, rtol=1e-7)
        assert abs(float(auto_lr)) > 1e-6  # a gradient that says something
        np.testing.assert_allclose(auto_start, fd_start, rtol=1e-6,
                                   atol=1e-9 * float(np.max(np.abs(fd_start))))


def test_grad_through_the_seed_gradient_descent_closed_form():
    # x_T = (1 - lr a)^T x_0 per coordinate: d f(x_T) / d lr in closed form
    T, lr = 30, 0.1
    with jax.enable_x64(True):
        g = jax.grad(lambda lr: gdjax.minimize(bowl, jnp.array([1.0, -2.0]), "sgd",
                                               learning_rate=lr, steps=T).loss)(lr)
        a, x0 = np.array([1.0, 4.0]), np.array([1.0, -2.0])
        closed = np.sum(a * x0**2 * (1 - lr * a) ** (2 * T - 1) * (-a) * T)
        np.testing.assert_allclose(g, closed, rtol=1e-10)


def test_a_traced_learning_rate_skips_value_checks_and_a_bad_structure_still_raises():
    run = jax.jit(lambda lr: gdjax.minimize(bowl, jnp.ones(2), "sgd", learning_rate=lr,
                                            steps=5).loss)
    assert np.isfinite(run(-0.1))  # a negative traced rate runs (uphill): checked eagerly only
    with pytest.raises(ValueError, match="learning_rate must be positive"):
        gdjax.minimize(bowl, jnp.ones(2), "sgd", learning_rate=-0.1, steps=5)
    with pytest.raises(ValueError, match="steps must be a positive integer, got steps=0"):
        jax.jit(lambda lr: gdjax.minimize(bowl, jnp.ones(2), "sgd", learning_rate=lr,
                                          steps=0))(0.1)
    with pytest.raises(ValueError, match="learning_rate must be a scalar"):
        gdjax.minimize(bowl, jnp.ones(2), "sgd", learning_rate=jnp.array([0.1, -0.1]))


def test_the_result_is_a_pytree_of_arrays():
    res = gdjax.minimize(functions.rosenbrock, jnp.array([-1.2, 1.0]), "adam", steps=50)
    leaves = jax.tree.leaves(jax.tree.map(jnp.asarray, res))
    assert all(isinstance(x, jax.Array) for x in leaves)
    assert res.status == "max_steps" and res.status == Status.MAX_STEPS
    assert "status=max_steps" in repr(res)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), res, res)
    assert stacked.params.shape == (2, 2)


# --- fit ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regression():
    return regression_problem.regression()


FIT_KW = dict(batch_size=8, epochs=6, tol=0.5, seed=3)


@pytest.mark.parametrize("name", NAMES)
def test_fit_under_jit_and_vmap_equals_eager_and_sweep(regression, name):
    data, p0 = regression
    lrs = np.asarray({"sgd": [0.1, 1e-4, 3.0], "momentum": [0.05, 1e-4, 3.0],
                      "adam": [0.3, 1e-4, 100.0]}[name], np.float32)
    loss = walled(lambda p: linear_loss(p["p"], p["batch"]))
    loss_fn = lambda p, batch: loss({"p": p, "batch": batch})  # noqa: E731
    jitted = jax.jit(lambda lr, data: gdjax.fit(loss_fn, p0, data, optimizer=name,
                                                 learning_rate=lr, **FIT_KW))
    batched = jax.vmap(lambda lr: gdjax.fit(loss_fn, p0, data, optimizer=name,
                                            learning_rate=lr, **FIT_KW))(lrs)
    res = gdjax.sweep(loss_fn, p0, name, data=data, grid={"learning_rate": lrs},
                      batch_size=8, epochs=6, tol=0.5, seed=3, record_every=6)
    assert res.status.names().tolist() == ["converged", "max_steps", "diverged"]
    for i, lr in enumerate(lrs):
        eager = gdjax.fit(loss_fn, p0, data, optimizer=name, learning_rate=lr, **FIT_KW)
        assert_same(jitted(lr, data), eager, rtol=1e-5)
        assert_same(batched, eager, i, rtol=1e-5)
        assert_same(res.result(i), eager, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_grad_through_fit_equals_finite_differences(regression, name):
    data, p0 = regression
    lr = {"sgd": 0.05, "momentum": 0.01, "adam": 0.02}[name]
    with jax.enable_x64(True):
        data = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), data)
        p0 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), p0)

        def final(lr):
            return gdjax.fit(linear_loss, p0, data, optimizer=name, learning_rate=lr,
                             batch_size=16, epochs=3, seed=1).loss

        auto = jax.grad(final)(jnp.float64(lr))
        fd = gdjax.numerical_gradient(final, jnp.float64(lr), method="richardson", step=1e-4)
        np.testing.assert_allclose(auto, fd, rtol=1e-7)
        assert abs(float(auto)) > 1e-6
