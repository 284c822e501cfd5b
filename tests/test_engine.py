"""The engine: one run against a batch of runs, plain steps against evaluated ones, replays,
skipped segments and the history after a stop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gdjax import engine
from gdjax.engine import Status

A = 4.0  # f(x) = 0.5 * A * x^2: plain GD diverges exactly for lr > 2 / A = 0.5


def _quadratic(x):
    return 0.5 * A * jnp.sum(x**2)


QUADRATIC = engine.autodiff(_quadratic)


def _sgd_run(lr, source=QUADRATIC, x0=(1.0, -2.0), **kw):
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    x0 = jnp.asarray(x0, jnp.float32)
    state = tx.init(x0)
    state = state._replace(hyperparams={**state.hyperparams, "learning_rate": lr})
    return engine.run(source, tx, x0, opt_state=state, **kw)


# stops at many different steps: converges fast, slowly, not at all; diverges early and late
LRS = jnp.array([0.001, 0.01, 0.1, 0.25, 0.45, 0.499, 0.5, 0.55, 0.7, 1.0, 5.0], jnp.float32)


def _assert_same_run(a, b, i, rtol=1e-6):
    """Run ``i`` of batch ``a`` against the single run ``b``, every field."""
    for name in ("status", "steps", "diverged_at"):
        assert int(getattr(a, name)[i]) == int(getattr(b, name)), (i, name)
    for name in ("params", "loss", "grad_norm", "best_loss"):
        np.testing.assert_allclose(getattr(a, name)[i], getattr(b, name), rtol=rtol, atol=1e-7,
                                   err_msg=f"{i} {name}")
    for got, want in zip(jax.tree.leaves(jax.tree.map(lambda r: r[i], a.history)),
                         jax.tree.leaves(b.history), strict=True):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-7, err_msg=f"{i} history")


@pytest.mark.parametrize("kw", [
    dict(steps=300, record_every=7, gtol=1e-6),  # every step evaluated
    dict(steps=300, record_every=300),  # plain steps, checked per segment, replays
    dict(steps=700, record_every=50),  # plain steps over several segments, with records
])
def test_a_batch_equals_its_runs_alone_with_every_status(kw):
    batch = jax.jit(jax.vmap(lambda lr: _sgd_run(lr, **kw)))(LRS)
    alone = jax.jit(lambda lr: _sgd_run(lr, **kw))
    for i, lr in enumerate(LRS):
        _assert_same_run(batch, alone(lr), i)
    names = {str(Status(int(s))) for s in batch.status}
    assert names == ({"converged", "max_steps", "diverged"} if "gtol" in kw
                     else {"max_steps", "diverged"})
    # exactly the learning rates above 2 / A diverge (fast enough to pass the ceiling in 300)
    np.testing.assert_array_equal(np.asarray(batch.status) == Status.DIVERGED, LRS > 2 / A)


def _first_divergence(lr, factor, x0=(1.0, -2.0), steps=700):
    """Independent oracle: the loop in NumPy float32; the first step whose loss is non-finite
    or passes ``f0 + factor * max(|f0|, 1)`` (``factor=None``: non-finite only)."""
    x = np.float32(x0)
    loss = lambda x: np.float32(0.5) * np.float32(A) * np.sum(x * x)  # noqa: E731
    f0 = loss(x)
    ceiling = np.inf if factor is None else f0 + np.float32(factor) * max(abs(f0), 1)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(1, steps + 1):
            x_new = np.float32(x - np.float32(lr) * (np.float32(A) * x))
            if not (np.isfinite(loss(x_new)) and loss(x_new) <= ceiling):
                return t, x
            x = x_new
    return -1, x


@pytest.mark.parametrize("factor", [engine.DIVERGENCE_FACTOR, None])
def test_plain_and_evaluated_steps_agree_with_each_other_and_with_the_oracle(factor):
    # Without a tolerance a batch's segments only update and are checked at their ends; a
    # divergence is replayed. Every step evaluated (record_every=1) must give the same runs,
    # and both the oracle's step of divergence and its last finite state. Plain steps are a
    # hand-written update (``x + u``) and evaluated ones hold stopped runs (``x + m * u``):
    # the compiler may fuse them differently, so states agree to rounding, stops exactly.
    # |1 - 4 lr| per step: from 1.004 (no divergence within 1,000 steps) to 39; the loss
    # passes the ceiling near step 290 at 0.504 and 580 at 0.502, overflows near 1,100 at 0.51
    lrs = [0.501, 0.502, 0.504, 0.51, 0.52, 0.53, 0.55, 0.6, 0.7, 1.0, 10.0, 0.3]
    lrs = jnp.array(lrs, jnp.float32)
    run = lambda lr, k: _sgd_run(lr, steps=1000, record_every=k, divergence=factor)  # noqa: E731
    plain = jax.jit(jax.vmap(lambda lr: run(lr, 1000)))(lrs)
    every = jax.jit(jax.vmap(lambda lr: run(lr, 1)))(lrs)
    for name in ("status", "steps", "diverged_at"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(every, name), err_msg=name)
    for name in ("params", "loss"):
        np.testing.assert_allclose(getattr(plain, name), getattr(every, name), rtol=1e-5,
                                   err_msg=name)
    for i, lr in enumerate(lrs):
        t, x = _first_divergence(float(lr), factor, steps=1000)
        assert int(plain.diverged_at[i]) == t, float(lr)
        if t > 0:  # spread over several segments of 256 steps, and frozen at the step before
            assert int(plain.steps[i]) == t - 1
            np.testing.assert_allclose(plain.params[i], x, rtol=1e-5)
    assert len({int(t) // engine.FAST_SEGMENT_STEPS for t in plain.diverged_at if t > 0}) > 1


@pytest.mark.parametrize("start", [0, engine.FAST_SEGMENT_STEPS - 1, engine.FAST_SEGMENT_STEPS])
def test_a_divergence_at_a_segment_edge_is_replayed_from_the_right_start(start):
    # A loss that turns non-finite exactly at a chosen step (its first, last or next segment's
    # first): the run keeps the parameters of the step before, and the step itself.
    at = start + 1

    def source(x, t, aux):
        loss, grad = jax.value_and_grad(lambda x: 0.5 * jnp.sum(x**2))(x)
        return jnp.where(t >= at, jnp.inf, loss), grad

    run = jax.jit(lambda lr: _sgd_run(lr, source=source, steps=600, record_every=600))(0.01)
    assert int(run.status) == Status.DIVERGED and int(run.diverged_at) == at
    assert int(run.steps) == at - 1
    np.testing.assert_allclose(run.params, 0.99 ** (at - 1) * np.float32([1.0, -2.0]),
                               rtol=1e-5)


def _band(x):
    """A loss that is +inf (or -inf) in a band of x[0] and finite outside it.

    Its gradient there is 0, so a run that steps into the band stays there: only the loss shows
    it (plain steps see it at their segment's end and replay the segment).
    """
    base = 0.5 * jnp.sum(x**2)
    inf = jnp.where(x[0] > 0, jnp.inf, -jnp.inf)
    return jnp.where((jnp.abs(x[0]) > 0.5) & (jnp.abs(x[0]) < 0.52), inf, base)


@pytest.mark.parametrize("every", [1, 200])  # every step evaluated; plain steps
def test_a_loss_non_finite_with_a_finite_gradient_stops_a_run_alone_and_in_a_batch(every):
    starts = jnp.array([[0.9, 0.0], [-0.9, 0.0], [0.3, 1.0], [0.6, 0.0]], jnp.float32)

    def one(x0):
        return _sgd_run(0.01, source=engine.autodiff(_band), x0=x0, steps=200,
                        record_every=every)

    batch = jax.jit(jax.vmap(one))(starts)
    # +inf and -inf alike: diverged, at the step into the band; the third never reaches it
    assert [str(Status(int(s))) for s in batch.status] == [
        "diverged", "diverged", "max_steps", "diverged"]
    assert int(batch.diverged_at[0]) == int(np.ceil(np.log(0.52 / 0.9) / np.log(0.99)))
    for i in range(len(starts)):
        _assert_same_run(batch, jax.jit(one)(starts[i]), i)


def test_a_batch_whose_runs_all_stopped_skips_its_segments():
    # A source that counts its evaluations through a callback: once every run has converged
    # (within the first segment), no later segment evaluates anything.
    calls = []

    def source(x, t, aux):
        jax.debug.callback(lambda: calls.append(1))
        return jax.value_and_grad(_quadratic)(x)

    lrs = jnp.array([0.2, 0.25, 0.3], jnp.float32)
    batch = jax.jit(jax.vmap(lambda lr: _sgd_run(lr, source=source, steps=6400, gtol=1e-6,
                                                 record_every=7)))(lrs)
    jax.block_until_ready(batch)
    assert np.all(np.asarray(batch.status) == Status.CONVERGED)
    assert np.all(np.asarray(batch.steps) < engine.SEGMENT_STEPS)
    np.testing.assert_array_equal(batch.history.step[0], engine.record_steps(6400, 7))
    assert len(calls) < 3 * engine.SEGMENT_STEPS  # 6,400 steps would evaluate 6,400 times


def test_batch_any_reduces_over_the_vmapped_axis_and_keeps_a_cond():
    x = jnp.array([[False, False], [False, True], [False, False]])
    out = jax.vmap(jax.vmap(engine.batch_any))(x)
    np.testing.assert_array_equal(out, np.ones((3, 2), bool))  # any over both axes: True
    assert not bool(jax.vmap(engine.batch_any)(jnp.zeros(4, bool))[0])
    jaxpr = str(jax.make_jaxpr(jax.vmap(lambda v: jax.lax.cond(
        engine.batch_any(v > 0), lambda v: v + 1, lambda v: v, v)))(jnp.arange(3.0)))
    assert "cond[" in jaxpr and "select_n" not in jaxpr


def test_history_after_a_stop_holds_the_final_state():
    for kw in (dict(gtol=1e-6, record_every=7), dict(record_every=7, ftol=1e-12)):
        run = jax.jit(jax.vmap(lambda lr, kw=kw: _sgd_run(lr, steps=300, **kw)))(LRS)
        steps = np.asarray(run.history.step[0])
        for i in range(len(LRS)):
            loss = np.asarray(run.history.loss[i])
            if int(run.status[i]) == Status.CONVERGED:
                after = steps >= int(run.steps[i])
                np.testing.assert_array_equal(loss[after], np.float32(run.loss[i]))
                assert np.all(np.isfinite(loss))
            elif int(run.status[i]) == Status.DIVERGED:
                after = steps >= int(run.diverged_at[i])
                assert np.all(np.isnan(loss[after])) and np.all(np.isfinite(loss[~after]))
                assert np.all(np.isfinite(run.params[i]))
            assert float(run.best_loss[i]) == np.min(loss[np.isfinite(loss)], initial=np.inf)


@pytest.mark.parametrize("steps, every, gtol", [
    (1000, 300, None),  # plain steps, a block spanning two units
    (1000, 300, 1e-30),  # evaluated steps, a block spanning five units
    (1000, 7, None),  # plain steps, 13 blocks a unit
    (600, 7, 1e-30),  # evaluated steps, the last unit's records past the last block
    (50, 1, None),  # every step
])
def test_history_records_the_closed_form_at_its_steps(steps, every, gtol):
    # SGD on 0.5 A x^2 at lr: x_t = (1 - lr A)^t x0, so each record's loss and gradient norm
    # are known; nothing stops (gtol far below), and the last record is the final state
    lr, x0 = 0.01, np.array([1.0, -2.0])
    run = jax.jit(lambda lr: _sgd_run(lr, steps=steps, record_every=every, gtol=gtol))(lr)
    at = np.append(np.arange(0, steps, every), steps)
    np.testing.assert_array_equal(run.history.step, at)
    x = (1 - lr * A) ** at[:, None] * x0
    np.testing.assert_allclose(run.history.loss, 0.5 * A * np.sum(x**2, axis=1), rtol=2e-4)
    np.testing.assert_allclose(run.history.grad_norm, A * np.linalg.norm(x, axis=1), rtol=2e-4)
    assert int(run.status) == Status.MAX_STEPS
    assert float(run.best_loss) == float(run.history.loss[-1]) == float(run.loss)


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


@pytest.mark.parametrize("steps, every, gtol, ftol", [
    (150, 1, 1e-3, None), (150, 7, None, 1e-4), (150, 150, 1e-2, 1e-5), (97, 10, 1e-4, None),
    (600, 50, None, None),
])
def test_a_step_dependent_source_alone_and_in_a_batch_in_every_field(steps, every, gtol, ftol):
    lrs = jnp.array([0.0, 1e-3, 0.05, 0.2, 0.3, 0.45, 0.6, 2.0], jnp.float32)
    kw = dict(source=_wobbly, steps=steps, record_every=every, gtol=gtol, ftol=ftol,
              record_params=True, record_fn=lambda p: {"p0": p[0]})
    batch = jax.jit(jax.vmap(lambda lr: _sgd_run(lr, **kw)))(lrs)
    single = jax.jit(lambda lr: _sgd_run(lr, **kw))
    seen = set()
    for i, lr in enumerate(lrs):
        alone = single(lr)
        seen.add(int(alone.status))
        _assert_same_run(batch, alone, i, rtol=1e-5)
    assert Status.DIVERGED in seen


def test_a_run_that_starts_stopped():
    tx = optax.sgd(0.1)
    for x0, status in ((jnp.array([0.0, 0.0]), Status.CONVERGED),
                       (jnp.array([jnp.nan, 1.0]), Status.DIVERGED)):
        run = jax.jit(lambda x: engine.run(engine.autodiff(_quadratic), tx, x, steps=20,
                                           gtol=1e-6, record_every=3))(x0)
        assert int(run.status) == status and int(run.steps) == 0
        np.testing.assert_array_equal(run.params, x0)
        if status == Status.CONVERGED:
            np.testing.assert_array_equal(run.history.loss, 0.0)
        else:
            assert int(run.diverged_at) == 0 and np.all(np.isnan(run.history.loss))
            assert float(run.best_loss) == np.inf


def test_a_stop_at_float32_resolution_falls_on_the_same_step_alone_and_in_a_batch():
    # ftol=1e-7 on a loss of 0.09 is at float32's resolution: the step of the stop depends on
    # the last bit of each loss. Found by comparing 720 random configs (a single run that
    # masked its update rounded differently from a batch and stopped a step later).
    a = jnp.array([1.1250015, 1.8868966, 0.5203861], jnp.float32)
    x0 = {"w": jnp.array([-0.25884807, 1.0557429, -2.2508543], jnp.float32),
          "b": jnp.float32(0.3)}

    def f(x):
        return 0.5 * jnp.sum(a * x["w"] ** 2) + jnp.sum(jnp.abs(x["b"]) ** 1.5)

    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)

    def one(lr):
        state = tx.init(x0)
        state = state._replace(hyperparams={**state.hyperparams, "learning_rate": lr})
        return engine.run(engine.autodiff(f), tx, x0, steps=30, opt_state=state, gtol=1e-2,
                          ftol=1e-7)

    lrs = jnp.array([0.05, 0.3, 0.6], jnp.float32)
    batch = jax.jit(jax.vmap(one))(lrs)
    assert int(batch.status[2]) == Status.CONVERGED  # the case found, at lr 0.6
    for i, lr in enumerate(lrs):
        alone = jax.jit(one)(lr)
        assert int(alone.status) == int(batch.status[i]), float(lr)
        assert int(alone.steps) == int(batch.steps[i]), float(lr)
        np.testing.assert_array_equal(alone.history.loss, batch.history.loss[i])


def test_status_compares_with_its_name_and_code_and_says_what_it_means():
    assert Status.CONVERGED == "converged" and Status.CONVERGED == 1
    assert Status.DIVERGED != "converged" and str(Status.MAX_STEPS) == "max_steps"
    assert f"{Status.DIVERGED:>9}" == " diverged"
    assert Status.of("diverged") is Status.DIVERGED and Status.of(2) is Status.MAX_STEPS
    assert "non-finite" in Status.DIVERGED.message
    with pytest.raises(ValueError, match="status must be one of converged, max_steps, diverged"):
        Status.of("finished")
    with pytest.raises(ValueError, match="got 0"):
        Status.of(0)


def test_a_converged_run_carried_off_by_a_non_finite_update_is_replayed_to_its_stop():
    # An optimiser whose update is NaN once the gradient is small: a run converges (tol met)
    # and its next, zeroed update is still NaN, which would carry its parameters off. The
    # replay keeps the parameters at which it converged.
    def update(g, state, params=None):
        small = optax.tree.norm(g) <= 0.05
        return jax.tree.map(lambda g: jnp.where(small, jnp.nan, -0.1 * g), g), state

    tx = optax.GradientTransformation(lambda p: optax.EmptyState(), update)
    x0 = jnp.array([1.0, -2.0])
    for every in (1, 7):
        run = jax.jit(lambda x, every=every: engine.run(QUADRATIC, tx, x, steps=100, gtol=0.05,
                                           record_every=every))(x0)
        assert int(run.status) == Status.CONVERGED and np.all(np.isfinite(run.params))
        s = int(run.steps)
        np.testing.assert_allclose(run.params, (1 - 0.1 * A) ** s * x0, rtol=1e-5)
        assert 0.05 * 0.6 < float(run.grad_norm) <= 0.05


def _small_rows(x):
    """Each row's reduction over a few elements, under ``vmap``: what a sweep of a small
    objective evaluates at every step."""
    return jax.vmap(lambda r: jnp.sum(2.0 * r * r))(x)


def test_gdjax_programs_compile_without_library_fusions():
    if not engine.compiler_options():  # (another backend, or a jaxlib without the option)
        pytest.skip("XLA:CPU with xla_cpu_experimental_ynn_fusion_type only")
    x = jnp.ones((4096, 8), jnp.float32)
    # jax's defaults hand these reductions to YNNPACK (an evaluated step of a sweep ran 1.8x
    # slower): should a jaxlib stop doing so, COMPILER_OPTIONS can go
    assert "ynn_fusion" in jax.jit(_small_rows).lower(x).compile().as_text()
    assert "ynn_fusion" not in engine.jit(_small_rows).lower(x).compile().as_text()
    # dot products keep the library, as jax's defaults have it (a dense network trains as fast)
    w = jnp.ones((8, 8), jnp.float32)
    assert "ynn_fusion" in engine.jit(jnp.dot).lower(x, w).compile().as_text()
    np.testing.assert_array_equal(engine.jit(_small_rows)(x), jax.jit(_small_rows)(x))
    # inside a user's transformation it is jax.jit (which takes options only at the top level)
    np.testing.assert_array_equal(jax.jit(engine.jit(_small_rows))(x), _small_rows(x))
    np.testing.assert_array_equal(jax.vmap(engine.jit(_small_rows))(x[None])[0], _small_rows(x))
    # ... even called there with constants only
    np.testing.assert_array_equal(jax.jit(lambda y: engine.jit(_small_rows)(x) + y)(1.0),
                                  _small_rows(x) + 1.0)


def test_a_jaxlib_without_the_options_compiles_with_its_defaults(monkeypatch):
    monkeypatch.setattr(engine, "COMPILER_OPTIONS", {"xla_gdjax_no_such_option": True})
    engine.compiler_options.cache_clear()
    try:
        assert engine.compiler_options() == {}
        x = jnp.ones((64, 8), jnp.float32)
        np.testing.assert_array_equal(engine.jit(_small_rows)(x), _small_rows(x))
    finally:
        engine.compiler_options.cache_clear()
