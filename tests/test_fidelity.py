"""Numerical fidelity of the descent entry points: every named optimiser equals a plain optax
loop at non-default hyperparameters, and every entry point computes in its input's dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gdjax

# every named optimiser at hyperparameters away from its defaults: (name, plain optax call)
CASES = {
    "sgd": ({"learning_rate": 0.3}, lambda: optax.sgd(0.3)),
    "momentum": ({"learning_rate": 0.05, "momentum": 0.6}, lambda: optax.sgd(0.05, 0.6)),
    "nesterov": ({"learning_rate": 0.05, "momentum": 0.7},
                 lambda: optax.sgd(0.05, 0.7, nesterov=True)),
    "adagrad": ({"learning_rate": 0.2, "initial_accumulator_value": 0.5, "eps": 1e-5},
                lambda: optax.adagrad(0.2, initial_accumulator_value=0.5, eps=1e-5)),
    "rmsprop": ({"learning_rate": 0.02, "decay": 0.8, "eps": 1e-4},
                lambda: optax.rmsprop(0.02, decay=0.8, eps=1e-4)),
    "adam": ({"learning_rate": 0.03, "b1": 0.8, "b2": 0.99, "eps": 1e-6},
             lambda: optax.adam(0.03, b1=0.8, b2=0.99, eps=1e-6)),
    "adamw": ({"learning_rate": 0.03, "b1": 0.85, "b2": 0.995, "eps": 1e-6, "weight_decay": 0.05},
              lambda: optax.adamw(0.03, b1=0.85, b2=0.995, eps=1e-6, weight_decay=0.05)),
}

# A float64 logistic regression (40 samples, 5 features). Over 60 steps from zero every
# optimiser above is still far from the minimum, where Adam's normalised steps turn chaotic
# (a 1e-12 change of its learning rate moves a 1,000-step iterate by 2e-3): the horizon on
# which trajectory equality is well posed.
STEPS = 60
_rng = np.random.default_rng(0)
X = _rng.standard_normal((40, 5))
Y = (X @ np.array([1.0, -2.0, 0.5, 0.0, 1.5]) + 0.3 * _rng.standard_normal(40) > 0) * 1.0


def logistic(w):
    z = jnp.asarray(X, w.dtype) @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - jnp.asarray(Y, w.dtype) * z) + 0.01 * jnp.sum(w**2)


def _optax_trajectory(tx, x):
    """The plain optax loop (the optax README's), every iterate."""

    def step(carry, _):
        x, state = carry
        updates, state = tx.update(jax.grad(logistic)(x), state, x)
        x = optax.apply_updates(x, updates)
        return (x, state), x

    return jnp.concatenate([x[None], jax.lax.scan(step, (x, tx.init(x)), length=STEPS)[1]])


@pytest.mark.parametrize("name", list(CASES))
def test_named_optimisers_equal_plain_optax_at_other_hyperparameters(name):
    hyper, plain = CASES[name]
    # float64: to 1e-12 relative, every iterate
    x0 = np.zeros(5)  # float64 NumPy: computed in float64 inside jax.enable_x64
    res = gdjax.minimize(logistic, x0, name, steps=STEPS, record_params=True, **hyper)
    with jax.enable_x64(True):
        want = np.asarray(jax.jit(_optax_trajectory, static_argnums=0)(plain(), jnp.zeros(5)))
    got = np.asarray(res.history.params)
    assert got.dtype == np.float64
    scale = np.max(np.abs(want), axis=1, keepdims=True) + 1e-300
    assert np.max(np.abs(got - want) / scale) <= 1e-12, name
    # float32: within float32 rounding of the same float32 loop
    res32 = gdjax.minimize(logistic, np.zeros(5, np.float32), name, steps=STEPS,
                           record_params=True, **hyper)
    want32 = np.asarray(jax.jit(_optax_trajectory, static_argnums=0)(plain(),
                                                                      jnp.zeros(5, jnp.float32)))
    got32 = np.asarray(res32.history.params)
    assert got32.dtype == np.float32
    assert np.max(np.abs(got32 - want32) / scale) <= 1e-5, name
    # and float32 is float32: its distance from the float64 path is rounding, not zero
    assert 0 < np.max(np.abs(got32 - want)) < 1e-3


# --- one dtype policy -------------------------------------------------------------------------

INPUTS = {
    "float32": lambda: np.ones(3, np.float32),
    "float64 NumPy": lambda: np.ones(3),
    "float64 jax under enable_x64": lambda: jnp.ones(3, jnp.float64),
}


def _bowl(x):
    return jnp.sum((x - 0.5) ** 2 * jnp.arange(1, 4, dtype=x.dtype))


def _fit_loss(p, batch):
    return jnp.mean((batch @ p) ** 2)


ENTRY_POINTS = {
    "minimize": lambda x: gdjax.minimize(_bowl, x, "adam", learning_rate=0.1, steps=5),
    "fit": lambda x: gdjax.fit(_fit_loss, x, np.ones((8, 3), x.dtype), learning_rate=0.1,
                               batch_size=4, epochs=2),
    "sweep": lambda x: gdjax.sweep(_bowl, x, "sgd", grid={"learning_rate": [0.1, 0.2]},
                                   steps=5, progress=False),
    "gradient_descent": lambda x: gdjax.gradient_descent(_bowl, x, lr=0.1, step_num=5),
}


@pytest.mark.parametrize("kind", list(INPUTS))
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_every_entry_point_computes_in_its_inputs_dtype(entry, kind):
    want = np.float32 if kind == "float32" else np.float64
    if kind.endswith("enable_x64"):
        with jax.enable_x64(True):
            out = ENTRY_POINTS[entry](INPUTS[kind]())
    else:
        out = ENTRY_POINTS[entry](INPUTS[kind]())
    assert not jax.config.jax_enable_x64  # never flipped globally
    params = out if entry == "gradient_descent" else out.params
    assert np.asarray(params).dtype == want
    if entry != "gradient_descent":
        assert np.asarray(out.loss).dtype == want
        assert np.asarray(out.history.loss).dtype == want
