"""State that is threaded but not trained, and a per-step PRNG key, in ``fit`` and ``sweep``.

References are independent: a NumPy loop over ``batch_schedule``'s batches for a running mean
(the shape of BatchNorm's statistics), and a hand-written JAX loop drawing
``fold_in(key(seed), t)`` for dropout.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gdjax
from gdjax import batching

X = jnp.linspace(-1.0, 1.0, 64)[:, None] ** 3
Y = 3 * X[:, 0] + 1
P0 = {"w": jnp.zeros(1), "b": jnp.zeros(())}
S0 = {"mean": jnp.zeros(()), "count": jnp.zeros((), jnp.int32)}


def stat_loss(p, s, batch):
    """Squared error; the state is a running mean of the batch inputs and a step counter."""
    x, y = batch
    new = {"mean": 0.9 * s["mean"] + 0.1 * jnp.mean(x), "count": s["count"] + 1}
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2), new


def plain_loss(p, batch):
    return stat_loss(p, S0, batch)[0]


def drop_loss(p, batch, key):
    """Squared error of inputs kept with probability 0.7 (dropout without rescaling)."""
    x, y = batch
    keep = jax.random.bernoulli(key, 0.7, x.shape)
    return jnp.mean(((x * keep) @ p["w"] + p["b"] - y) ** 2)


def running_mean_reference(seed, batch_size, epochs):
    m = 0.0
    for rows in batching.batch_schedule(seed, 64, batch_size, epochs):
        m = 0.9 * m + 0.1 * float(np.mean(np.asarray(X)[rows]))
    return m


@pytest.mark.parametrize("mode", ["plain", "tol", "every step"])
def test_state_moves_once_per_update_as_a_hand_loop(mode):
    # plain steps, evaluated steps (tol) and a record every step take different paths through
    # the engine; each must move the state once per update, on that update's batch
    extra = {"plain": {}, "tol": {"tol": 1e-12}, "every step": {"record_every": 1}}[mode]
    res = gdjax.fit(stat_loss, P0, (X, Y), optimizer="sgd", learning_rate=0.2, batch_size=8,
                    epochs=3, seed=5, state=S0, **extra)
    assert int(res.state["count"]) == int(res.steps) == 24
    np.testing.assert_allclose(float(res.state["mean"]), running_mean_reference(5, 8, 3),
                               rtol=1e-5)
    plain = gdjax.fit(plain_loss, P0, (X, Y), optimizer="sgd", learning_rate=0.2,
                      batch_size=8, epochs=3, seed=5)  # (one compile for the three modes)
    np.testing.assert_allclose(res.params["w"], plain.params["w"], rtol=1e-6)  # not trained


def test_state_stops_with_its_run_and_is_read_by_eval_fn():
    # a run that converges at once keeps its start state; eval_fn reads (params, state)
    res = gdjax.fit(stat_loss, P0, (X, Y), optimizer="sgd", learning_rate=0.2, batch_size=8,
                    epochs=2, state=S0, tol=1e9, eval_fn=lambda p, s: {"count": s["count"]})
    assert res.status == "converged" and int(res.steps) == 0
    assert int(res.state["count"]) == 0
    res = gdjax.fit(stat_loss, P0, (X, Y), optimizer="sgd", learning_rate=0.2, batch_size=8,
                    epochs=2, state=S0, eval_fn=lambda p, s: {"count": s["count"]})
    np.testing.assert_array_equal(res.history.metrics["count"], res.history.step)


def test_dropout_keys_follow_the_seed_and_the_step():
    def hand(seed, lr=0.2, steps=16):
        rows = batching.batch_schedule(seed, 64, 8, 2)
        grad = jax.jit(jax.grad(drop_loss))
        p = P0
        for t in range(steps):
            key = jax.random.fold_in(jax.random.key(seed), t)
            g = grad(p, (X[rows[t]], Y[rows[t]]), key)
            p = jax.tree.map(lambda a, b: a - lr * b, p, g)
        return p

    runs = {s: gdjax.fit(drop_loss, P0, (X, Y), optimizer="sgd", learning_rate=0.2,
                         batch_size=8, epochs=2, seed=s, rng=True) for s in (0, 1)}
    again = gdjax.fit(drop_loss, P0, (X, Y), optimizer="sgd", learning_rate=0.2, batch_size=8,
                      epochs=2, seed=0, rng=True)
    np.testing.assert_array_equal(again.params["w"], runs[0].params["w"])
    for s, res in runs.items():
        np.testing.assert_allclose(res.params["w"], hand(s)["w"], rtol=1e-5)
    assert not np.allclose(runs[0].params["w"], runs[1].params["w"], rtol=1e-3)
    # seeds are read modulo 2**64 for the batch order and 2**32 for the keys, any size
    wide = [gdjax.fit(drop_loss, P0, (X, Y), optimizer="sgd", learning_rate=0.2, batch_size=8,
                      epochs=2, seed=s, rng=True).params["w"] for s in (-1, 2**64 - 1)]
    np.testing.assert_array_equal(wide[0], wide[1])


def test_full_batch_dropout_still_differs_by_seed():
    # the full batch has no sample order: the seed reaches the keys alone
    w = [gdjax.fit(drop_loss, P0, (X, Y), optimizer="sgd", learning_rate=0.2, epochs=10,
                   seed=s, rng=True).params["w"] for s in (0, 1)]
    assert not np.allclose(w[0], w[1], rtol=1e-3)


def stat_drop_loss(p, s, batch, key):
    x, y = batch
    keep = jax.random.bernoulli(key, 0.7, x.shape)
    new = {"mean": 0.9 * s["mean"] + 0.1 * jnp.mean(x * keep), "count": s["count"] + 1}
    return jnp.mean(((x * keep) @ p["w"] + p["b"] - y) ** 2), new


def test_sweep_over_seed_equals_fit_with_state_and_keys(tmp_path):
    # with tol, so the sweep's evaluated steps and its stops are compared too (the plain steps'
    # state is compared under vmap in test_fit_with_state_composes_with_jit_grad_and_vmap)
    tol = 1e-2
    grid = {"seed": [0, 1, 2, 3], "learning_rate": [0.1, 0.4]}
    res = gdjax.sweep(stat_drop_loss, P0, "sgd", data=(X, Y), batch_size=8, epochs=3,
                      state=S0, rng=True, grid=grid, tol=tol,
                      eval_fn=lambda p, s: {"mean": s["mean"]})
    assert len({float(m) for m in res.state["mean"][::2]}) == 4  # seeds differ
    res.to_npz(tmp_path / "r.npz")
    back = gdjax.load(tmp_path / "r.npz")
    for name in ("mean", "count"):
        np.testing.assert_array_equal(back.state[name], res.state[name])
    for i in range(len(res)):
        c = res.config(i)
        one = gdjax.fit(stat_drop_loss, P0, (X, Y), optimizer="sgd", batch_size=8, epochs=3,
                        learning_rate=c["learning_rate"], seed=c["seed"], state=S0, rng=True,
                        tol=tol, eval_fn=lambda p, s: {"mean": s["mean"]})
        np.testing.assert_allclose(res.loss[i], one.loss, rtol=1e-5)
        np.testing.assert_allclose(res.state["mean"][i], one.state["mean"], rtol=1e-5)
        assert int(res.state["count"][i]) == int(one.state["count"]) == int(one.steps)
        np.testing.assert_allclose(res.history.metrics["mean"][i], one.history.metrics["mean"],
                                   rtol=1e-5)
        assert res.result(i).state["count"] == one.state["count"]


def test_a_diverged_run_keeps_a_finite_state():
    res = gdjax.fit(stat_loss, P0, (X, Y), optimizer="sgd", learning_rate=50.0, batch_size=8,
                    epochs=4, state=S0)
    assert res.status == "diverged"
    assert np.isfinite(float(res.state["mean"]))
    assert int(res.state["count"]) == int(res.diverged_at)


def test_fit_with_state_composes_with_jit_grad_and_vmap():
    def final(lr):
        return gdjax.fit(stat_loss, P0, (X, Y), optimizer="sgd", learning_rate=lr,
                         batch_size=8, epochs=1, state=S0).loss

    g = jax.jit(jax.grad(final))(0.1)
    fd = (final(0.1 + 1e-3) - final(0.1 - 1e-3)) / 2e-3
    np.testing.assert_allclose(g, fd, rtol=2e-2)

    def run(lr):
        return gdjax.fit(stat_drop_loss, P0, (X, Y), optimizer="sgd", learning_rate=lr,
                         batch_size=8, epochs=1, state=S0, rng=True)

    batched = jax.vmap(run)(jnp.array([0.1, 0.4]))
    for i, lr in enumerate((0.1, 0.4)):
        alone = run(lr)
        np.testing.assert_allclose(batched.state["mean"][i], alone.state["mean"], rtol=1e-6)
        np.testing.assert_allclose(batched.loss[i], alone.loss, rtol=1e-6)


def test_bad_state_and_rng_inputs():
    with pytest.raises(TypeError, match="new_state shaped like state"):
        gdjax.fit(lambda p, s, b: (stat_loss(p, s, b)[0], {"mean": s["mean"]}), P0, (X, Y),
                  state=S0)
    with pytest.raises(TypeError, match=r"loss_fn must be callable as loss_fn\(params, batch, "
                                        r"key=key\)"):
        gdjax.fit(lambda p, b: stat_loss(p, S0, b)[0], P0, (X, Y), rng=True)
    with pytest.raises(TypeError, match="rng must be True or False"):
        gdjax.fit(drop_loss, P0, (X, Y), rng="yes")
    with pytest.raises(TypeError, match="state must be a pytree of arrays"):
        gdjax.fit(stat_loss, P0, (X, Y), state={"mean": "zero"})
    with pytest.raises(ValueError, match="need data"):
        gdjax.sweep(lambda x: jnp.sum(x**2), jnp.ones(2), grid={"learning_rate": [0.1]},
                    state=S0)
