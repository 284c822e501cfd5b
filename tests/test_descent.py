"""The descent engine, gradient_descent and minimize against closed forms and optax's own loop."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from seed_notes import function_2
from seed_notes import gradient_descent as seed_gradient_descent

from gdjax import descent, engine, functions, optimizers
from gdjax.descent import gradient_descent, minimize

# --- the seed's example -----------------------------------------------------------------------


@pytest.mark.parametrize("grad", ["numerical", "autodiff"])
def test_seed_example_printed_output(grad):
    init_x = np.array([-3.0, 4.0])
    x = gradient_descent(function_2, init_x=init_x, lr=0.1, step_num=100, grad=grad)
    # The seed prints array([-6.11110793e-10, 8.14814391e-10]).
    assert np.array2string(x, precision=8) == "[-6.11110793e-10  8.14814391e-10]"
    assert x.dtype == np.float64
    np.testing.assert_array_equal(init_x, [-3.0, 4.0])  # unlike the seed, not modified


# Same estimator, same float64 formula; not bit-for-bit because XLA contracts ``a*a + b*b`` inside
# the user's f into fused multiply-adds, which NumPy does not: about 1e-12 relative after 100 steps.


def test_seed_example_equal_to_seed_code():
    expected = seed_gradient_descent(function_2, np.array([-3.0, 4.0]), lr=0.1, step_num=100)
    x = gradient_descent(function_2, np.array([-3.0, 4.0]), lr=0.1, step_num=100, grad="numerical")
    np.testing.assert_allclose(x, expected, rtol=1e-10)


def test_seed_on_a_cubic():
    f = lambda x: x[0] ** 3 / 3 + x[0] * x[1] + 2 * x[1] ** 2 + x[2] ** 2
    init = np.array([0.7, -0.4, 1.5])
    expected = seed_gradient_descent(f, init.copy(), lr=0.05, step_num=40)
    x = gradient_descent(f, init, lr=0.05, step_num=40, grad="numerical")
    np.testing.assert_allclose(x, expected, rtol=1e-10)


# --- closed forms -------------------------------------------------------------------------------


def test_gd_on_quadratic_matches_closed_form_every_step():
    a, eta, x0 = 3.0, 0.1, 2.5
    with jax.enable_x64(True):
        res = minimize(
            lambda x: 0.5 * a * jnp.sum(x**2), jnp.array([x0]), "sgd",
            learning_rate=eta, steps=50, record_params=True,
        )
        k = np.arange(51)
        np.testing.assert_allclose(res.history.step, k)
        np.testing.assert_allclose(res.history.params[:, 0], (1 - eta * a) ** k * x0, rtol=1e-12)


def _divergence_step(a, eta, x0, steps, dtype, factor):
    """Independent oracle: the seed-style loop in NumPy ``dtype``; the first step whose loss is
    non-finite or passes ``f0 + factor * max(|f0|, 1)`` (``factor=None``: non-finite only)."""
    cast = np.dtype(dtype).type
    x = cast(x0)
    loss = lambda x: cast(0.5) * cast(a) * x * x  # noqa: E731
    f0 = loss(x)
    ceiling = np.inf if factor is None else f0 + cast(factor) * max(abs(f0), 1)
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(1, steps + 1):
            x = cast(x - cast(eta) * (cast(a) * x))
            if not (np.isfinite(loss(x)) and loss(x) <= ceiling):
                return k
    return None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("factor", [engine.DIVERGENCE_FACTOR, None])
def test_gd_diverges_exactly_above_two_over_a(dtype, factor):
    # the 2/L boundary of a quadratic, reported on the right side within a few hundred steps
    # by the default criterion (float64 overflows only after thousands) and by overflow alone
    a = 4.0
    etas = [0.2, 0.45, 0.495, 0.499, 0.505, 0.52, 0.55, 0.7, 1.0, 2.0]  # boundary 2/a = 0.5
    steps = 500 if factor else 3000
    f = lambda x: 0.5 * a * jnp.sum(x**2)
    for eta in etas:
        expected = _divergence_step(a, eta, 1.0, steps, dtype, factor)
        if factor is None and dtype == np.float64 and eta < 0.7:
            continue  # float64 would not overflow within 3,000 steps
        res = minimize(f, np.ones(1, dtype), "sgd", learning_rate=eta, steps=steps, tol=1e-5,
                       divergence=factor)
        if eta > 2 / a:
            assert res.status == "diverged", eta
            assert res.diverged_at == expected, eta
            assert res.steps == res.diverged_at - 1
            assert np.isfinite(res.loss) and np.all(np.isfinite(res.params))
            assert res.params.dtype == dtype
        else:
            assert res.status != "diverged", eta
            assert res.diverged_at == -1 and expected is None


def _spectral_radius(matrices):
    return max(np.max(np.abs(np.linalg.eigvals(m))) for m in matrices)


@pytest.mark.parametrize("name", ["momentum", "nesterov"])
def test_momentum_rates_on_quadratic_with_known_condition_number(name):
    mu, L = 1.0, 100.0  # condition number 100
    lam = np.array([mu, 3.0, 10.0, 50.0, L])
    if name == "momentum":  # Polyak's optimal heavy ball
        eta = 4 / (np.sqrt(L) + np.sqrt(mu)) ** 2
        beta = ((np.sqrt(L) - np.sqrt(mu)) / (np.sqrt(L) + np.sqrt(mu))) ** 2
        # optax form: v' = g + beta v; x' = x - eta v'
        mats = [np.array([[1 - eta * l, -eta * beta], [l, beta]]) for l in lam]
        optimal = (np.sqrt(L) - np.sqrt(mu)) / (np.sqrt(L) + np.sqrt(mu))
    else:  # Nesterov with eta = 1/L
        eta = 1 / L
        beta = (np.sqrt(L) - np.sqrt(mu)) / (np.sqrt(L) + np.sqrt(mu))
        # optax form: v' = g + beta v; x' = x - eta (g + beta v')
        mats = [np.array([[1 - eta * (1 + beta) * l, -eta * beta**2], [l, beta]]) for l in lam]
        optimal = 1 - np.sqrt(mu / L)
    rho = _spectral_radius(mats)
    assert rho <= optimal * 1.001  # the theory's rate (a Jordan block may sit exactly on it)
    assert rho < (L - mu) / (L + mu)  # beats plain GD's best rate

    with jax.enable_x64(True):
        f = lambda x: 0.5 * jnp.sum(lam * x**2)
        res = minimize(
            f, jnp.ones(5), name, learning_rate=eta, momentum=beta, steps=400,
            record_params=True,
        )
        norms = np.linalg.norm(np.asarray(res.history.params), axis=1)
    # Every iterate equals the linear recurrence (x, v) <- M (x, v) of the chosen form; the
    # rates alone cannot tell the forms apart (at Nesterov's parameters heavy ball's rate is
    # 0.9045 against 0.9000, within the measurement's Jordan-block factor (k2/k1)^(1/200)).
    state = np.stack([np.ones(5), np.zeros(5)])
    oracle = [state[0]]
    for _ in range(400):
        state = np.stack([m @ state[:, i] for i, m in enumerate(mats)], axis=1)
        oracle.append(state[0])
    oracle = np.array(oracle)
    error = np.linalg.norm(np.asarray(res.history.params) - oracle, axis=1)
    assert np.max(error / np.linalg.norm(oracle, axis=1)) < 1e-9
    k1, k2 = 200, 400
    measured = (norms[k2] / norms[k1]) ** (1 / (k2 - k1))
    assert measured == pytest.approx(rho, rel=0.02)


OPTIMIZER_TABLE = {
    # name: {problem: (learning_rate, steps)}
    "sgd": {"sphere": (0.1, 300), "rosenbrock": (2e-3, 20000), "beale": (1e-2, 20000)},
    "momentum": {"sphere": (0.1, 300), "rosenbrock": (1e-3, 20000), "beale": (2e-3, 20000)},
    "nesterov": {"sphere": (0.1, 300), "rosenbrock": (1e-3, 20000), "beale": (2e-3, 20000)},
    "adagrad": {"sphere": (0.5, 2000), "rosenbrock": (0.3, 20000), "beale": (0.3, 20000)},
    "rmsprop": {"sphere": (1e-2, 2000), "rosenbrock": (1e-3, 20000), "beale": (1e-3, 20000)},
    "adam": {"sphere": (0.1, 2000), "rosenbrock": (2e-2, 20000), "beale": (2e-2, 20000)},
    "adamw": {"sphere": (0.1, 2000), "rosenbrock": (2e-2, 20000), "beale": (2e-2, 20000)},
}


@pytest.mark.parametrize("name", optimizers.OPTIMIZERS)
def test_every_named_optimizer_converges_on_standard_problems(name):
    for problem, (lr, steps) in OPTIMIZER_TABLE[name].items():
        fn = functions.get(problem)
        start = jnp.asarray(fn.start, jnp.float32)
        extra = {"weight_decay": 0.0} if name == "adamw" else {}
        res = minimize(fn, start, name, learning_rate=lr, steps=steps, record_every=1000, **extra)
        assert res.status != "diverged", (name, problem)
        gap = np.asarray(fn.minimizers) - np.asarray(res.params)
        distance = np.min(np.linalg.norm(gap, axis=1))
        assert distance < 2e-2, (name, problem, res)


# --- equals optax's own loop --------------------------------------------------------------------


def _optax_loop(f, tx, x, steps):
    state = tx.init(x)
    xs = [x]
    for _ in range(steps):
        g = jax.grad(f)(x)
        u, state = tx.update(g, state, x)
        x = optax.apply_updates(x, u)
        xs.append(x)
    return jnp.stack(xs)


@pytest.mark.parametrize(
    "name, reference",
    [
        ("sgd", lambda: optax.sgd(0.01)),
        ("momentum", lambda: optax.sgd(0.01, momentum=0.9)),
        ("nesterov", lambda: optax.sgd(0.01, momentum=0.9, nesterov=True)),
        ("adagrad", lambda: optax.adagrad(0.1)),
        ("rmsprop", lambda: optax.rmsprop(0.01)),
        ("adam", lambda: optax.adam(1e-3)),
        ("adamw", lambda: optax.adamw(1e-3)),
    ],
)
def test_trajectory_equals_hand_written_optax_loop(name, reference):
    # Agreement to 1e-9, not bitwise: XLA fuses the jitted loop into multiply-adds.
    f = functions.himmelblau
    with jax.enable_x64(True):
        x0 = jnp.array([0.5, -0.5])
        expected = _optax_loop(f, reference(), x0, 60)
        res = minimize(f, x0, name, steps=60, record_params=True)  # gdjax's defaults
        assert res.status == "max_steps"
        np.testing.assert_allclose(res.history.params, expected, rtol=1e-9, atol=1e-12)


def test_user_transform_and_schedule_are_accepted():
    f = functions.rosenbrock
    schedule = optax.exponential_decay(1e-2, transition_steps=10, decay_rate=0.9)
    with jax.enable_x64(True):
        x0 = jnp.array([-1.2, 1.0])
        expected = _optax_loop(f, optax.chain(optax.clip(1.0), optax.adam(schedule)), x0, 40)
        res = minimize(f, x0, optax.chain(optax.clip(1.0), optax.adam(schedule)), steps=40,
                       record_params=True)
        np.testing.assert_allclose(res.history.params, expected, rtol=1e-8)
        res2 = minimize(f, x0, "adam", learning_rate=schedule, steps=40, record_params=True)
        np.testing.assert_allclose(
            res2.history.params, _optax_loop(f, optax.adam(schedule), x0, 40), rtol=1e-8
        )


def test_jit_equals_eager():
    f = functions.himmelblau
    source = engine.autodiff(f)
    kw = dict(steps=12, record_every=5, gtol=1e-6)
    with jax.enable_x64(True):
        tx = optimizers.optimizer("adam", learning_rate=1e-2)
        x0 = jnp.array([0.5, -0.5])
        jitted = jax.jit(lambda x: engine.run(source, tx, x, **kw))(x0)
        with jax.disable_jit():
            eager = engine.run(source, tx, x0, **kw)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_new_hyperparameter_values_do_not_recompile(monkeypatch):
    # engine.run is traced once per compilation of minimize's program
    monkeypatch.setattr(descent.engine, "run", chex.assert_max_traces(engine.run, n=2))
    f = lambda x: jnp.sum((x - 1.0) ** 2)  # a new function: a new program
    for lr in (0.1, 0.2, 0.05, 0.3):
        minimize(f, jnp.zeros(3), "momentum", learning_rate=lr, steps=20)
    # Naming one more hyperparameter compiles once (the unnamed defaults are constants of the
    # program); its new values do not.
    for lr, mom in [(0.2, 0.5), (0.05, 0.0), (0.3, 0.95)]:
        minimize(f, jnp.zeros(3), "momentum", learning_rate=lr, momentum=mom, steps=20)
    with pytest.raises(AssertionError, match="traced > 2 times"):
        minimize(f, jnp.zeros(3), "momentum", learning_rate=0.1, steps=21)  # new program


@pytest.mark.parametrize("name", ["adam", "rmsprop", "nesterov"])
def test_named_defaults_give_the_run_of_the_unnamed_defaults(name):
    # unnamed defaults are constants of the program, named ones travel as values: same run
    f = functions.rosenbrock
    defaults = optimizers.hyperparameters(name)
    a = minimize(f, jnp.array([-1.2, 1.0]), name, learning_rate=1e-3, steps=300)
    b = minimize(f, jnp.array([-1.2, 1.0]), name, **{**defaults, "learning_rate": 1e-3},
                 steps=300)
    np.testing.assert_allclose(a.params, b.params, rtol=1e-5)
    np.testing.assert_allclose(a.history.loss, b.history.loss, rtol=1e-5)


def test_new_hyperparameter_values_take_effect():
    f = lambda x: 0.5 * jnp.sum(x**2)
    a = minimize(f, jnp.ones(1), "sgd", learning_rate=0.1, steps=3)
    b = minimize(f, jnp.ones(1), "sgd", learning_rate=0.5, steps=3)
    np.testing.assert_allclose(a.params, 0.9**3, rtol=1e-6)
    np.testing.assert_allclose(b.params, 0.5**3, rtol=1e-6)


# --- status, tolerance, history -----------------------------------------------------------------


def test_tolerances_mark_converged_and_stop_changing():
    f = lambda x: 0.5 * jnp.sum(x**2)
    res = minimize(f, jnp.ones(2), "sgd", learning_rate=0.5, steps=100, tol=1e-3)
    # grad norm = sqrt(2) * 0.5^k <= 1e-3  <=>  k >= 11
    assert res.status == "converged" and res.steps == 11
    np.testing.assert_allclose(res.params, 0.5**11, rtol=1e-6)
    res = minimize(f, jnp.ones(2), "sgd", learning_rate=0.5, steps=100, ftol=1e-4)
    # loss change 0.75 * 0.25^(k-1) <= 1e-4  <=>  k >= 8
    assert res.status == "converged" and res.steps == 8
    res = minimize(f, jnp.ones(2), "sgd", learning_rate=0.5, steps=5)
    assert res.status == "max_steps" and res.steps == 5


def test_decimated_history_steps_and_values():
    f = lambda x: 0.5 * jnp.sum(x**2)
    res = minimize(f, jnp.ones(1), "sgd", learning_rate=0.5, steps=23, record_every=5)
    np.testing.assert_array_equal(res.history.step, [0, 5, 10, 15, 20, 23])
    np.testing.assert_allclose(res.history.loss, 0.5 * 0.25 ** res.history.step, rtol=1e-6)
    np.testing.assert_allclose(res.history.grad_norm, 0.5 ** res.history.step, rtol=1e-6)
    assert float(res.loss) == pytest.approx(0.5 * 0.25**23, rel=1e-5)


def test_nan_start_is_a_status_not_an_exception():
    res = minimize(lambda x: jnp.sum(x**2), jnp.array([jnp.nan, 1.0]), "adam", steps=10)
    assert res.status == "diverged" and res.diverged_at == 0 and res.steps == 0


def test_nan_in_the_middle_freezes_the_last_finite_state():
    f = lambda x: jnp.sum(jnp.sqrt(x))  # steps below zero give NaN
    res = minimize(f, jnp.array([1.0]), "sgd", learning_rate=0.4, steps=50, record_params=True)
    assert res.status == "diverged"
    k = res.diverged_at
    assert np.all(np.isfinite(res.history.params))
    assert float(res.params[0]) > 0
    # the run stopped changing after the last finite step
    frozen = np.asarray(res.history.params)[k:, 0]
    np.testing.assert_array_equal(frozen, frozen[0])


def test_numerical_grad_minimize_agrees_with_autodiff():
    f = functions.rosenbrock
    with jax.enable_x64(True):
        x0 = jnp.array([-1.2, 1.0])
        a = minimize(f, x0, "adam", learning_rate=1e-2, steps=200, grad="numerical")
        b = minimize(f, x0, "adam", learning_rate=1e-2, steps=200)
        np.testing.assert_allclose(a.params, b.params, rtol=1e-6)


def test_pytree_params():
    f = lambda p: jnp.sum((p["w"] - 2.0) ** 2) + (p["b"][0] + 1.0) ** 2
    res = minimize(f, {"w": jnp.zeros((2, 2)), "b": (jnp.zeros(()),)}, "adam",
                   learning_rate=0.1, steps=500, tol=1e-4)
    assert res.status == "converged"
    np.testing.assert_allclose(res.params["w"], 2.0, atol=1e-3)
    np.testing.assert_allclose(res.params["b"][0], -1.0, atol=1e-3)


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(steps=0), ValueError, "steps must be a positive integer, got steps=0"),
        (dict(steps=2.5), ValueError, "steps=2.5"),
        (dict(record_every=-1), ValueError, "record_every=-1"),
        (dict(optimizer="adamax"), ValueError, "unknown optimizer 'adamax'.*sgd, momentum"),
        (dict(learning_rate=-0.1), ValueError, "learning_rate must be positive.*=-0.1"),
        (dict(learning_rate=float("nan")), ValueError, "learning_rate must be finite"),
        (dict(momentum=0.9), ValueError, "unknown hyperparameter.*momentum.*'adam'"),
        (dict(optimizer="momentum", momentum=1.5), ValueError, r"momentum must be in \[0, 1\)"),
        (dict(tol=-1.0), ValueError, "tol must be finite and >= 0, got tol=-1.0"),
        (dict(grad="fd"), ValueError, "grad must be one of.*got grad='fd'"),
        (dict(optimizer=42), TypeError, "optimizer must be a name or an optax"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    kwargs = {"optimizer": "adam", **kwargs}
    opt = kwargs.pop("optimizer")
    with pytest.raises(error, match=match):
        minimize(lambda x: jnp.sum(x**2), jnp.ones(2), opt, **kwargs)


def test_bad_objectives_and_starts():
    with pytest.raises(ValueError, match="f must return a scalar, got output of shape \\(2,\\)"):
        minimize(lambda x: x**2, jnp.ones(2))
    with pytest.raises(TypeError, match="x0 must hold floating-point arrays.*int32"):
        minimize(lambda x: jnp.sum(x**2), jnp.array([1, 2]))
    with pytest.raises(ValueError, match="x0 must contain at least one array"):
        minimize(lambda x: 0.0, {})
    with pytest.raises(ValueError, match="x0 must not hold empty arrays"):
        minimize(lambda x: jnp.sum(x), jnp.zeros(0))
    with pytest.raises(TypeError, match="f must be callable"):
        minimize("rosenbrock", jnp.ones(2))
    with pytest.raises(ValueError, match="hyperparameters.*inject_hyperparams"):
        minimize(lambda x: jnp.sum(x**2), jnp.ones(2), optax.adam(0.1), momentum=0.5)


# --- what repeated calls skip -------------------------------------------------------------------


def test_repeated_calls_check_every_argument_again():
    f = lambda x: 0.5 * jnp.sum(x**2)
    x0 = jnp.ones(2)
    first = minimize(f, x0, "sgd", learning_rate=0.1, steps=5)
    again = minimize(f, x0, "sgd", learning_rate=0.1, steps=5)
    np.testing.assert_array_equal(first.params, again.params)
    np.testing.assert_array_equal(first.history.loss, again.history.loss)
    assert (first.status, first.steps) == (again.status, again.steps)
    # True == 1 and 1 == 1.0: an argument of another type is never taken for a checked one
    with pytest.raises(ValueError, match="steps=True"):
        minimize(f, x0, "sgd", learning_rate=0.1, steps=True)
    minimize(f, x0, "sgd", learning_rate=0.1, steps=1)
    with pytest.raises(ValueError, match="steps=True"):
        minimize(f, x0, "sgd", learning_rate=0.1, steps=True)
    for bad in (float("nan"), -0.1):
        with pytest.raises(ValueError, match="learning_rate"):
            minimize(f, x0, "sgd", learning_rate=bad, steps=5)
    with pytest.raises(TypeError, match="floating-point"):
        minimize(f, jnp.ones(2, jnp.int32), "sgd", learning_rate=0.1, steps=5)
    # new values of a checked kind take effect
    b = minimize(f, x0, "sgd", learning_rate=0.5, steps=3)
    np.testing.assert_allclose(b.params, 0.5**3, rtol=1e-6)
    # a float64 start keeps running in float64 when the call is repeated outside enable_x64
    with jax.enable_x64(True):
        wide = jnp.array([1.0, -1.0], jnp.float64)
    runs = [minimize(f, wide, "sgd", learning_rate=0.1, steps=40) for _ in range(2)]
    for r in runs:
        assert r.params.dtype == jnp.float64 and r.history.loss.dtype == np.float64
        np.testing.assert_allclose(r.params, 0.9**40 * np.array([1.0, -1.0]), rtol=1e-12)


def test_a_diverged_run_is_frozen_at_its_last_finite_state():
    f = lambda x: 0.5 * 4.0 * jnp.sum(x**2)  # GD diverges for lr > 0.5
    x0 = jnp.array([1.0, -2.0])
    for every in (1, 50, 200):  # evaluated steps, and plain steps replayed
        bad = minimize(f, x0, "sgd", learning_rate=0.6, steps=200, record_every=every,
                       record_params=True)
        assert bad.status == "diverged" and np.all(np.isfinite(bad.params))
        k = int(bad.diverged_at)
        # the closed form of the step before the divergence
        np.testing.assert_allclose(bad.params, (1 - 0.6 * 4.0) ** (k - 1) * x0, rtol=1e-5)
        at = np.asarray(bad.history.step)
        np.testing.assert_array_equal(bad.history.params[at >= k],
                                      np.broadcast_to(bad.params, ((at >= k).sum(), 2)))
        assert np.all(np.isnan(bad.history.loss[at >= k]))
        assert np.all(np.isfinite(bad.history.loss[at < k]))
