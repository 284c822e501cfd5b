"""fit: stochastic, mini-batch and batch gradient descent on in-memory data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdjax.batching import batch_schedule, fit
from gdjax.descent import minimize


def _regression(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    w = np.array([1.0, -2.0, 0.5], np.float32)
    y = (x @ w + 0.3).astype(np.float32)
    return {"x": jnp.asarray(x), "y": jnp.asarray(y)}, w


def _mse(p, batch):
    return jnp.mean((batch["x"] @ p["w"] + p["b"] - batch["y"]) ** 2)


P0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}


def test_full_batch_equals_minimize_on_the_mean_loss():
    data, _ = _regression()
    full = fit(_mse, P0, data, optimizer="adam", learning_rate=0.05, epochs=40)
    ref = minimize(lambda p: _mse(p, data), P0, "adam", learning_rate=0.05, steps=40)
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(ref.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert full.steps == 40
    np.testing.assert_array_equal(full.loss, _mse(ref.params, data))


def _sgd_reference(data, batch_size, epochs, seed, lr):
    """Independent loop: NumPy SGD over the same per-epoch orders, partial batch dropped."""
    rng = np.random.default_rng(seed)  # the documented scheme: epoch e's order is draw e
    n = data["x"].shape[0]
    x, y = np.asarray(data["x"], np.float64), np.asarray(data["y"], np.float64)
    w, b = np.zeros(3), 0.0
    for _ in range(epochs):
        order = rng.permutation(n)
        for s in range(n // batch_size):
            rows = order[s * batch_size : (s + 1) * batch_size]
            r = x[rows] @ w + b - y[rows]
            w = w - lr * 2 * x[rows].T @ r / batch_size
            b = b - lr * 2 * r.mean()
    return w, b


@pytest.mark.parametrize("batch_size", [1, 10, 32])
def test_mini_batch_matches_an_independent_numpy_loop(batch_size):
    data, _ = _regression(n=100)
    with jax.enable_x64(True):
        data64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), data)
        p0 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), P0)
        res = fit(_mse, p0, data64, optimizer="sgd", learning_rate=0.02,
                  batch_size=batch_size, epochs=3, seed=7)
    w, b = _sgd_reference(data, batch_size, 3, 7, 0.02)
    np.testing.assert_allclose(res.params["w"], w, rtol=1e-10)
    np.testing.assert_allclose(res.params["b"], b, rtol=1e-10)
    assert res.steps == 3 * (100 // batch_size)


def test_schedule_is_a_permutation_per_epoch_with_the_remainder_left_out():
    idx = batch_schedule(3, 10, 3, 4)
    assert idx.shape == (4 * 3, 3)
    epochs = idx.reshape(4, 9)
    for e in epochs:
        assert len(set(e.tolist())) == 9  # no repeats within an epoch; one sample sits out
    assert len({tuple(e) for e in epochs}) == 4  # a fresh order each epoch


def test_same_seed_same_result_other_seed_other_result():
    data, _ = _regression()
    a = fit(_mse, P0, data, learning_rate=0.05, batch_size=8, epochs=2, seed=1)
    b = fit(_mse, P0, data, learning_rate=0.05, batch_size=8, epochs=2, seed=1)
    c = fit(_mse, P0, data, learning_rate=0.05, batch_size=8, epochs=2, seed=2)
    np.testing.assert_array_equal(a.params["w"], b.params["w"])
    assert not np.array_equal(a.params["w"], c.params["w"])


def test_history_once_per_epoch_with_eval_metrics():
    data, w_true = _regression()
    res = fit(
        _mse, P0, data, optimizer="sgd", learning_rate=0.05, batch_size=16, epochs=10,
        eval_fn=lambda p: {"w_error": jnp.sum((p["w"] - w_true) ** 2)},
    )
    np.testing.assert_array_equal(res.history.step, np.arange(11) * 6)
    err = np.asarray(res.history.metrics["w_error"])
    assert err[0] == pytest.approx(float(np.sum(w_true**2)), rel=1e-6)
    assert err[-1] < 1e-3 * err[0]
    assert res.status == "max_steps"


def test_divergent_training_is_a_status():
    data, _ = _regression()
    res = fit(_mse, P0, data, optimizer="sgd", learning_rate=5.0, batch_size=8, epochs=50)
    assert res.status == "diverged"
    assert res.diverged_at is not None
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(res.params))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(batch_size=0), ValueError, "batch_size must be a positive integer, got batch_size=0"),
        (dict(batch_size=1000), ValueError, r"at most the number of samples \(96\).*=1000"),
        (dict(epochs=0), ValueError, "epochs must be a positive integer, got epochs=0"),
        (dict(optimizer="lbfgs"), ValueError, "unknown optimizer 'lbfgs'"),
        (dict(learning_rate=-1.0), ValueError, "learning_rate must be positive"),
        (dict(seed="a"), TypeError, "seed must be a Python int"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    data, _ = _regression()
    with pytest.raises(error, match=match):
        fit(_mse, P0, data, **kwargs)


def test_bad_data_and_loss():
    data, _ = _regression()
    with pytest.raises(ValueError, match="same leading.*size"):
        fit(_mse, P0, {"x": data["x"], "y": data["y"][:50]})
    with pytest.raises(ValueError, match="loss_fn must return a scalar"):
        fit(lambda p, b: b["x"] @ p["w"], P0, data)
    with pytest.raises(TypeError, match="params must contain at least one floating-point"):
        fit(_mse, {"w": jnp.zeros(3, jnp.int32), "b": jnp.zeros((), jnp.int32)}, data)


def test_digits_mlp_mini_batch_reaches_90_percent():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train, test = order[:1400], order[1400:]
    data = {"x": jnp.asarray(x[train]), "y": jnp.asarray(y[train])}
    x_test, y_test = jnp.asarray(x[test]), jnp.asarray(y[test])

    def forward(p, xb):
        h = jnp.tanh(xb @ p["w1"] + p["b1"])
        return h @ p["w2"] + p["b2"]

    def loss(p, batch):
        logits = forward(p, batch["x"])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], 1))

    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "w1": jax.random.normal(k1, (64, 32)) / 8.0, "b1": jnp.zeros(32),
        "w2": jax.random.normal(k2, (32, 10)) / np.sqrt(32), "b2": jnp.zeros(10),
    }
    accuracy = lambda p: jnp.mean(jnp.argmax(forward(p, x_test), -1) == y_test)
    res = fit(loss, params, data, optimizer="adam", learning_rate=1e-2, batch_size=32,
              epochs=15, seed=0, eval_fn=accuracy)
    assert float(res.history.metrics[-1]) > 0.90
    assert float(res.history.metrics[0]) < 0.3  # it learned, it did not start there
