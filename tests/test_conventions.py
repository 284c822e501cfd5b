"""The conventions JAX users bring: ``has_aux``, extra ``args``, and optax transformations that
read the loss (``optax.lbfgs``), in ``minimize``, ``fit`` and ``sweep``."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gdjax
from gdjax import functions

TARGET = jnp.array([1.0, -2.0, 0.5])


def residual(x, target, scale):
    """A loss with extra arguments and an auxiliary output (the residual and a count)."""
    r = scale * (x - target)
    return jnp.sum(r**2) + 0.1 * jnp.sum(x**4), {"residual": r, "big": jnp.sum(jnp.abs(r) > 1)}


def test_minimize_args_and_aux_equal_a_closure_and_its_own_aux():
    kw = dict(learning_rate=0.05, steps=60)
    res = gdjax.minimize(residual, jnp.zeros(3), "adam", args=(TARGET, 2.0), has_aux=True, **kw)
    closed = gdjax.minimize(lambda x: residual(x, TARGET, 2.0)[0], jnp.zeros(3), "adam", **kw)
    np.testing.assert_array_equal(res.params, closed.params)
    np.testing.assert_array_equal(res.history.loss, closed.history.loss)
    want = residual(res.params, TARGET, 2.0)[1]
    np.testing.assert_array_equal(res.aux["residual"], want["residual"])
    assert int(res.aux["big"]) == int(want["big"])
    assert closed.aux is None
    # a lone non-tuple argument is one argument (scipy's convention)
    one = gdjax.minimize(lambda x, t: jnp.sum((x - t) ** 2), jnp.zeros(3), "sgd", args=TARGET,
                         learning_rate=0.1, steps=50)
    np.testing.assert_allclose(one.params, TARGET, rtol=1e-4)


def test_args_are_traced_vmap_and_grad_reach_them():
    def final(target):
        return gdjax.minimize(residual, jnp.zeros(3), "sgd", learning_rate=0.02, steps=30,
                              args=(target, 1.0), has_aux=True).loss

    targets = jnp.stack([TARGET, -TARGET, 2 * TARGET])
    batched = jax.vmap(final)(targets)
    for i, t in enumerate(targets):
        np.testing.assert_allclose(batched[i], final(t), rtol=1e-6)
    g = jax.grad(final)(TARGET)  # d final loss / d target, against central differences
    h = 1e-2
    fd = [(final(TARGET.at[j].add(h)) - final(TARGET.at[j].add(-h))) / (2 * h) for j in range(3)]
    np.testing.assert_allclose(g, fd, rtol=2e-2, atol=1e-4)


def test_fit_args_and_aux():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 3)).astype(np.float32)
    y = X @ np.float32([1.0, -1.0, 2.0])

    def loss(p, batch, weight):
        err = batch[0] @ p - batch[1]
        return weight * jnp.mean(err**2), jnp.max(jnp.abs(err))

    kw = dict(optimizer="sgd", learning_rate=0.05, batch_size=16, epochs=5, seed=3)
    res = gdjax.fit(loss, jnp.zeros(3), (X, y), args=(0.5,), has_aux=True, **kw)
    closed = gdjax.fit(lambda p, b: loss(p, b, 0.5)[0], jnp.zeros(3), (X, y), **kw)
    np.testing.assert_array_equal(res.params, closed.params)
    np.testing.assert_array_equal(res.loss, closed.loss)
    full = loss(res.params, (jnp.asarray(X), jnp.asarray(y)), 0.5)  # aux over the whole data
    np.testing.assert_allclose(res.aux, full[1], rtol=1e-6)
    np.testing.assert_allclose(res.loss, full[0], rtol=1e-6)


def test_sweep_args_and_aux_equal_each_config_alone():
    lrs = [0.01, 0.03, 0.2]
    res = gdjax.sweep(residual, np.zeros(3, np.float32), "sgd", grid={"learning_rate": lrs},
                      steps=40, args=(TARGET, 1.5), has_aux=True, progress=False)
    for i, lr in enumerate(lrs):
        alone = gdjax.minimize(residual, np.zeros(3, np.float32), "sgd", learning_rate=lr,
                               steps=40, record_every=res.history.step[0, 1],
                               args=(TARGET, 1.5), has_aux=True)
        np.testing.assert_allclose(res.params[i], alone.params, rtol=1e-6)
        np.testing.assert_allclose(res.aux["residual"][i], alone.aux["residual"], rtol=1e-6)
        assert res.result(i).aux["big"] == alone.aux["big"]


def test_has_aux_needs_a_pair():
    with pytest.raises(TypeError, match=r"has_aux=True, f must return a pair \(loss, aux\)"):
        gdjax.minimize(lambda x: jnp.sum(x**2), jnp.ones(2), has_aux=True, steps=2)
    with pytest.raises(TypeError, match="args must hold arrays or numbers"):
        gdjax.minimize(lambda x, s: jnp.sum(x**2), jnp.ones(2), args=("text",), steps=2)


def test_lbfgs_reaches_rosenbrocks_minimum_within_100_steps():
    # optax.lbfgs reads the loss (its line search calls value_fn): every step passes it
    res = gdjax.minimize(functions.rosenbrock, jnp.array([-1.2, 1.0]), optax.lbfgs(),
                         steps=100, tol=1e-6)
    assert res.status == "converged" and res.steps <= 100
    np.testing.assert_allclose(res.params, [1.0, 1.0], atol=1e-4)
    # the plain optax loop the optax docs give, step for step
    tx, x = optax.lbfgs(), jnp.array([-1.2, 1.0])
    value_and_grad = optax.value_and_grad_from_state(functions.rosenbrock)

    @jax.jit
    def step(x, state):
        value, grad = value_and_grad(x, state=state)
        updates, state = tx.update(grad, state, x, value=value, grad=grad,
                                   value_fn=functions.rosenbrock)
        return optax.apply_updates(x, updates), state

    state = tx.init(x)
    for _ in range(int(res.steps)):
        x, state = step(x, state)
    np.testing.assert_allclose(res.params, x, rtol=1e-5)
    # and in a sweep over starts, each start as it runs alone
    starts = np.float32([[-1.2, 1.0], [2.0, 2.0], [-0.5, -0.5]])
    swept = gdjax.sweep(functions.rosenbrock, starts[0], optax.lbfgs(), grid={"x0": starts},
                        steps=100, tol=1e-6, progress=False)
    assert swept.counts()["converged"] == 3
    # config 0 is res's run; the batched program rounds differently, and near the minimum the
    # line search's choices (so the stop step) follow the rounding: equal to the tolerance
    np.testing.assert_allclose(swept.params[0], res.params, atol=1e-5)


def test_a_transformation_that_reads_the_loss_gets_it_every_step():
    # reduce_on_plateau scales the updates down once the loss stops improving: it must see
    # the loss of every step, with or without a tolerance
    tx = optax.chain(optax.sgd(0.5), optax.contrib.reduce_on_plateau(patience=2, factor=0.1,
                                                                     accumulation_size=1))
    f = lambda x: jnp.sum(jnp.abs(x))  # noqa: E731 (SGD at a fixed rate oscillates around 0)
    res = gdjax.minimize(f, jnp.array([1.3]), tx, steps=40, record_every=40)

    @jax.jit
    def step(x, state):
        value, grad = jax.value_and_grad(f)(x)
        updates, state = tx.update(grad, state, x, value=value)
        return optax.apply_updates(x, updates), state

    x, state = jnp.array([1.3]), tx.init(jnp.array([1.3]))
    for _ in range(40):
        x, state = step(x, state)
    np.testing.assert_allclose(res.params, x, rtol=1e-6)
    assert float(jnp.abs(x[0])) < 0.05  # the plateau rule did act (plain SGD stays at 0.2)
