"""The engine's batch path (segments, replays, skips) against single runs; history after a stop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gdjax import engine

A = 4.0  # f(x) = 0.5 * A * x^2: plain GD diverges exactly for lr > 2 / A = 0.5


def _quadratic(x):
    return 0.5 * A * jnp.sum(x**2)


def _one(lr, *, axis_name=None, steps=300, gtol=1e-6, record_every=7):
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    x0 = jnp.array([1.0, -2.0])
    state = tx.init(x0)
    state = state._replace(hyperparams={**state.hyperparams, "learning_rate": lr})
    return engine.run(
        engine.autodiff(_quadratic), tx, x0, steps=steps, opt_state=state,
        record_every=record_every, gtol=gtol, axis_name=axis_name,
    )


# stops at many different steps: converges fast, slowly, not at all; diverges early and late
LRS = jnp.array([0.001, 0.01, 0.1, 0.25, 0.45, 0.499, 0.5, 0.55, 0.7, 1.0, 5.0],
                jnp.float32)


def test_batch_with_segments_equals_single_runs():
    batch = jax.jit(jax.vmap(lambda lr: _one(lr, axis_name="c"), axis_name="c"))(LRS)
    for i, lr in enumerate(LRS):
        alone = jax.jit(_one)(lr)
        assert int(batch.status[i]) == int(alone.status), float(lr)
        assert int(batch.steps[i]) == int(alone.steps), float(lr)
        assert int(batch.diverged_at[i]) == int(alone.diverged_at), float(lr)
        np.testing.assert_allclose(batch.params[i], alone.params, rtol=1e-6)
        np.testing.assert_allclose(batch.best_loss[i], alone.best_loss, rtol=1e-6)
        np.testing.assert_allclose(batch.history.loss[i], alone.history.loss, rtol=1e-5)
    statuses = set(engine.status_names(batch.status))
    assert statuses == {"converged", "max_steps", "diverged"}
    # exactly the learning rates above 2 / A diverge (fast enough to overflow in 300 steps)
    np.testing.assert_array_equal(np.asarray(batch.status) == engine.DIVERGED, LRS > 2 / A)


def _band(x):
    """A loss that is +inf (or -inf) for one step's worth of x and finite again after it.

    The gradient stays finite, so plain SGD walks through the band: only a check of every
    step's loss sees the non-finite value (the end of a segment looks healthy).
    """
    base = 0.5 * jnp.sum(x**2)
    inf = jnp.where(x[0] > 0, jnp.inf, -jnp.inf)
    return jnp.where((jnp.abs(x[0]) > 0.5) & (jnp.abs(x[0]) < 0.52), inf, base)


def test_a_loss_non_finite_for_one_step_inside_a_segment_stops_the_run_as_alone():
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.01)
    starts = jnp.array([[0.9, 0.0], [-0.9, 0.0], [0.3, 1.0], [0.6, 0.0]], jnp.float32)

    def one(x0, axis_name=None):
        return engine.run(engine.autodiff(_band), tx, x0, steps=200, record_every=200,
                          axis_name=axis_name)

    batch = jax.jit(jax.vmap(lambda x: one(x, "c"), axis_name="c"))(starts)
    names = engine.status_names(batch.status)
    # +inf and -inf alike: diverged, at the step of the band; the others run on
    assert list(names) == ["diverged", "diverged", "max_steps", "diverged"]
    for i in range(len(starts)):
        alone = jax.jit(one)(starts[i])
        assert int(batch.status[i]) == int(alone.status)
        assert int(batch.diverged_at[i]) == int(alone.diverged_at)
        assert 0 < int(alone.diverged_at) < engine.SEGMENT_STEPS or i == 2
        np.testing.assert_allclose(batch.params[i], alone.params, rtol=1e-6)
        np.testing.assert_allclose(batch.best_loss[i], alone.best_loss, rtol=1e-6)


def test_segment_where_every_run_stopped_is_skipped_but_steps_and_records_stay_right():
    # all converge within the first segment; the remaining segments are skipped
    lrs = jnp.array([0.2, 0.25, 0.3], jnp.float32)
    batch = jax.jit(jax.vmap(lambda lr: _one(lr, axis_name="c", steps=640), axis_name="c"))(lrs)
    assert np.all(np.asarray(batch.status) == engine.CONVERGED)
    assert np.all(np.asarray(batch.steps) < engine.SEGMENT_STEPS)
    np.testing.assert_array_equal(batch.history.step[0], engine.record_steps(640, 7))


def test_history_after_a_stop_holds_the_final_state():
    for axis in (None, "c"):
        run = jax.vmap(lambda lr, axis=axis: _one(lr, axis_name=axis), axis_name="c")(LRS)
        steps = np.asarray(run.history.step[0])
        for i in range(len(LRS)):
            loss = np.asarray(run.history.loss[i])
            if int(run.status[i]) == engine.CONVERGED:
                after = steps >= int(run.steps[i])
                np.testing.assert_array_equal(loss[after], np.float32(run.loss[i]))
                assert np.all(np.isfinite(loss))
            elif int(run.status[i]) == engine.DIVERGED:
                after = steps >= int(run.diverged_at[i])
                assert np.all(np.isnan(loss[after])) and np.all(np.isfinite(loss[~after]))
                assert np.all(np.isfinite(run.params[i]))


def test_global_norm_matches_optax_for_small_and_large_leaves_and_under_vmap():
    rng = np.random.default_rng(0)
    tree = {"w": jnp.asarray(rng.normal(size=(40, 3)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32), "s": jnp.float32(-2.0)}
    np.testing.assert_allclose(engine.global_norm(tree), optax.tree.norm(tree), rtol=1e-6)
    batch = jax.tree.map(lambda a: jnp.stack([a, 2 * a, 0 * a]), tree)
    norms = jax.vmap(engine.global_norm)(batch)
    np.testing.assert_allclose(norms, np.array([1, 2, 0]) * float(optax.tree.norm(tree)), rtol=1e-6)
    assert float(engine.global_norm({"x": jnp.array([3.0, 4.0])})) == 5.0


def _wobbly(params, t, aux):
    """A source whose loss depends on the step, as a mini-batch loss does: after a stop, only
    evaluating at the stop step again gives the values the run stopped with."""
    scale = 1.0 + 0.5 * jnp.sin(t.astype(jnp.float32))
    return jax.value_and_grad(lambda x: scale * _quadratic(x))(params)


def test_one_run_equals_the_checked_batch_path_in_every_field():
    # One run takes a hand-written loop's step masked after its stop (a divergence re-runs it
    # checked); a batch takes segments and replays. Both against each other, every output.
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    x0 = jnp.array([1.0, -2.0])

    def one(lr, axis_name=None, *, steps, record_every, gtol, ftol):
        state = tx.init(x0)
        state = state._replace(hyperparams={**state.hyperparams, "learning_rate": lr})
        return engine.run(_wobbly, tx, x0, steps=steps, opt_state=state,
                          record_every=record_every, gtol=gtol, ftol=ftol, record_params=True,
                          record_fn=lambda p: {"p0": p[0]}, axis_name=axis_name)

    lrs = jnp.array([0.0, 1e-3, 0.05, 0.2, 0.3, 0.45, 0.6, 2.0], jnp.float32)
    cases = [(150, 1, 1e-3, None), (150, 7, None, 1e-4), (150, 150, 1e-2, 1e-5),
             (97, 10, 1e-4, None)]
    for steps, every, gtol, ftol in cases:
        kw = dict(steps=steps, record_every=every, gtol=gtol, ftol=ftol)
        batch = jax.jit(jax.vmap(lambda lr: one(lr, "c", **kw), axis_name="c"))(lrs)  # noqa: B023
        seen = set()
        for i, lr in enumerate(lrs):
            alone = jax.jit(lambda lr: one(lr, **kw))(lr)  # noqa: B023
            seen.add(int(alone.status))
            for name in ("status", "steps", "diverged_at"):
                assert int(getattr(batch, name)[i]) == int(getattr(alone, name)), (kw, lr, name)
            for name in ("params", "loss", "grad_norm", "best_loss"):
                np.testing.assert_allclose(getattr(batch, name)[i], getattr(alone, name),
                                           rtol=1e-5, atol=1e-7, err_msg=f"{kw} {lr} {name}")
            for got, want in zip(jax.tree.leaves(jax.tree.map(lambda a: a[i], batch.history)),  # noqa: B023
                                 jax.tree.leaves(alone.history), strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=f"{kw} {lr}")
        assert engine.DIVERGED in seen and engine.CONVERGED in seen, kw


def test_one_run_that_starts_stopped():
    tx = optax.sgd(0.1)
    for x0, status in ((jnp.array([0.0, 0.0]), engine.CONVERGED),
                       (jnp.array([jnp.nan, 1.0]), engine.DIVERGED)):
        run = jax.jit(lambda x: engine.run(engine.autodiff(_quadratic), tx, x, steps=20,
                                           gtol=1e-6, record_every=3))(x0)
        assert int(run.status) == status and int(run.steps) == 0
        np.testing.assert_array_equal(run.params, x0)
        if status == engine.CONVERGED:
            np.testing.assert_array_equal(run.history.loss, 0.0)
        else:
            assert int(run.diverged_at) == 0 and np.all(np.isnan(run.history.loss))


def test_a_stop_at_float32_resolution_falls_on_the_same_step_alone_and_in_a_batch():
    # ftol=1e-7 on a loss of 0.09 is at float32's resolution: the step of the stop depends on
    # the last bit of each loss. Found by comparing 720 random configs: a single run that masked
    # its update (p + where(go, u, 0)) rounded differently from a batch's plain p + u and
    # stopped a step later; one that selects after the add rounds as the batch does.
    a = jnp.array([1.1250015, 1.8868966, 0.5203861], jnp.float32)
    x0 = {"w": jnp.array([-0.25884807, 1.0557429, -2.2508543], jnp.float32),
          "b": jnp.float32(0.3)}

    def f(x):
        return 0.5 * jnp.sum(a * x["w"] ** 2) + jnp.sum(jnp.abs(x["b"]) ** 1.5)

    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)

    def one(lr, axis_name=None):
        state = tx.init(x0)
        state = state._replace(hyperparams={**state.hyperparams, "learning_rate": lr})
        return engine.run(engine.autodiff(f), tx, x0, steps=30, opt_state=state, gtol=1e-2,
                          ftol=1e-7, axis_name=axis_name)

    lrs = jnp.array([0.05, 0.3, 0.6], jnp.float32)
    batch = jax.jit(jax.vmap(lambda lr: one(lr, "c"), axis_name="c"))(lrs)
    assert int(batch.status[2]) == engine.CONVERGED  # the case found, at lr 0.6
    for i, lr in enumerate(lrs):
        alone = jax.jit(one)(lr)
        assert int(alone.status) == int(batch.status[i]), float(lr)
        assert int(alone.steps) == int(batch.steps[i]), float(lr)
        np.testing.assert_array_equal(alone.history.loss, batch.history.loss[i])
