"""gdjax.sweep: closed-form divergence, equality with minimize/fit, grids, recompilation, resume."""

import importlib
import io
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import regression_problem
from regression_problem import linear_loss
from rich.console import Console

from gdjax import functions
from gdjax.batching import fit
from gdjax.descent import minimize
from gdjax.sweep import LogUniform, Uniform, starts_grid, sweep

runner = importlib.import_module("gdjax.sweep.runner")  # gdjax.sweep is the function

A = 4.0  # curvature of the bowl: plain gradient descent converges iff eta < 2 / A = 0.5
F32_MAX = float(np.finfo(np.float32).max)


def bowl(x):
    return 0.5 * A * jnp.sum(x**2)


@pytest.fixture(scope="module")
def regression():
    return regression_problem.regression()


def first_overflow(eta, x0):
    """The first step t at which ``0.5 A x_t^2`` overflows float32, x_t = x0 (1 - eta A)^t."""
    growth = abs(1 - eta * A)
    ratio = math.log(math.sqrt(F32_MAX / (0.5 * A)) / abs(x0)) / math.log(growth)
    assert abs(ratio - round(ratio)) > 1e-3, "too close to call in float32"
    return math.ceil(ratio)


def table_text(res, **kw):
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(res.table(**kw))
    return console.export_text()


# --- the closed form ----------------------------------------------------------------------------


def test_learning_rates_across_two_over_a():
    etas = np.array([0.05, 0.2, 0.3, 0.45, 0.55, 0.6, 0.8, 1.2])  # none within 10% of 2/A = 0.5
    x0 = np.float32([1.0])
    # (divergence=None: overflow alone, the criterion first_overflow knows)
    res = sweep(bowl, x0, "sgd", grid={"learning_rate": etas}, steps=400, tol=1e-5,
                divergence=None)
    stable = etas < 2 / A
    assert res.status[stable].tolist() == ["converged"] * stable.sum()
    assert res.status[~stable].tolist() == ["diverged"] * (~stable).sum()
    expected = [first_overflow(eta, 1.0) if eta > 2 / A else -1 for eta in etas]
    assert res.diverged_at.tolist() == expected
    # Frozen at the last finite state: one step before the overflow, |x| = |1 - eta A|^(t - 1).
    for i in np.flatnonzero(~stable):
        t = expected[i]
        np.testing.assert_allclose(
            np.abs(res.params[i, 0]), abs(1 - etas[i] * A) ** (t - 1), rtol=1e-4
        )
        assert res.steps[i] == t - 1 and np.isfinite(res.loss[i])
    assert np.all(np.abs(res.params[stable]) < 1e-5)
    # The diverged configs changed nothing for the others: a sweep of the stable ones alone agrees.
    alone = sweep(bowl, x0, "sgd", grid={"learning_rate": etas[stable]}, steps=400, tol=1e-5,
                  divergence=None)
    np.testing.assert_array_equal(alone.params, res.params[stable])
    np.testing.assert_array_equal(alone.history.loss, res.history.loss[stable])


def test_divergence_never_raises_and_best_skips_diverged():
    res = sweep(bowl, np.float32([3.0, -1.0]), "momentum", steps=300,
                grid={"learning_rate": [0.01, 0.1, 5.0, 50.0]})
    assert res.counts()["diverged"] == 2
    assert res.best().index in (0, 1)
    assert np.all(np.isfinite(res.loss)) and np.all(np.isfinite(res.params))


# --- a config in a sweep == the config run alone ------------------------------------------------

# Float tolerance, not bitwise: XLA fuses the batched program differently from the unbatched one
# (e.g. x - eta*g may become a fused multiply-add in one and not the other), a last-bit difference
# per step. On these stable runs the results agree to ~1e-6.
RTOL = 2e-5


def test_minimize_style_equals_minimize():
    lrs = np.geomspace(1e-3, 3e-2, 3)
    starts = np.float32([[-1.2, 1.0], [0.5, 2.0]])
    res = sweep(functions.rosenbrock, np.float32([0.0, 0.0]), "adam", steps=300, record_every=10,
                grid={"learning_rate": lrs, "x0": starts, "b1": [0.8, 0.9]})
    assert len(res) == 12
    for i in range(len(res)):
        c = res.config(i)
        alone = minimize(functions.rosenbrock, c.pop("x0"), "adam", steps=300, record_every=10,
                         **c)
        assert res.status[i] == alone.status and res.steps[i] == alone.steps
        np.testing.assert_allclose(res.params[i], alone.params, rtol=RTOL, atol=1e-6)
        np.testing.assert_allclose(res.loss[i], alone.loss, rtol=RTOL, atol=1e-7)
        np.testing.assert_allclose(res.history.loss[i], alone.history.loss, rtol=RTOL, atol=1e-7)
        np.testing.assert_array_equal(res.history.step[i], alone.history.step)


def test_minimize_style_equals_minimize_with_64_parameters_and_every_status():
    # the same configs stop at the same steps with the same states alone and in a sweep
    x0 = np.linspace(-1.0, 1.0, 64).astype(np.float32)
    lrs = [0.01, 0.1, 0.3, 0.6]  # bowl: slow, converges, converges fast, diverges (> 2 / A)
    res = sweep(bowl, x0, "sgd", grid={"learning_rate": lrs}, steps=150, tol=1e-3,
                record_every=7)
    assert set(res.status.names()) == {"max_steps", "converged", "diverged"}
    for i, lr in enumerate(lrs):
        alone = minimize(bowl, jnp.asarray(x0), "sgd", learning_rate=lr, steps=150, tol=1e-3,
                         record_every=7)
        assert (res.status[i], res.steps[i]) == (alone.status, alone.steps), lr
        assert res.diverged_at[i] == alone.diverged_at
        np.testing.assert_allclose(res.params[i], alone.params, rtol=RTOL, atol=1e-6)
        np.testing.assert_allclose(res.history.loss[i], alone.history.loss, rtol=RTOL,
                                   atol=1e-6)


def test_minimize_style_float64_and_numerical_gradient():
    x0 = np.array([2.0, -1.0])  # float64: the sweep runs in float64, like minimize
    res = sweep(bowl, x0, "sgd", grid={"learning_rate": [0.1, 0.2]}, steps=50, grad="numerical")
    assert res.params.dtype == np.float64 and res.loss.dtype == np.float64
    for i, lr in enumerate([0.1, 0.2]):
        alone = minimize(bowl, x0, "sgd", learning_rate=lr, steps=50, grad="numerical")
        # the values shrink to ~1e-11; XLA fuses (and FMA-contracts) the two programs differently
        np.testing.assert_allclose(res.params[i], alone.params, rtol=1e-12, atol=1e-18)


def test_fit_style_equals_fit(regression):
    data, p0 = regression
    res = sweep(linear_loss, p0, "momentum", data=data, epochs=3, momentum=0.5, progress=False,
                grid={"batch_size": [16, 48, 8], "seed": [0, 7]}, learning_rate=0.05)
    assert len(res) == 6
    assert res.grid["batch_size"].tolist() == [16, 16, 48, 48, 8, 8]  # grid order kept
    for i in range(len(res)):
        c = res.config(i)
        alone = fit(linear_loss, p0, data, optimizer="momentum", momentum=0.5, epochs=3,
                    learning_rate=0.05, **c)
        np.testing.assert_allclose(res.params["w"][i], alone.params["w"], rtol=RTOL, atol=1e-6)
        np.testing.assert_allclose(res.loss[i], alone.loss, rtol=RTOL)
        np.testing.assert_allclose(res.history.loss[i], alone.history.loss, rtol=RTOL)
        np.testing.assert_array_equal(res.history.step[i], alone.history.step)
        assert res.steps[i] == alone.steps == 3 * (48 // c["batch_size"])


def test_fit_style_stops_equal_fit_alone(regression):
    # Mini-batch runs that converge (at different steps) or diverge: the stopped state's
    # gradient norm and the records after the stop must read as in fit alone, whose carry is
    # frozen at the stop (the batch path settles them at the end instead).
    data, p0 = regression
    lrs = [0.02, 0.05, 0.1, 3.0]
    res = sweep(linear_loss, p0, "sgd", data=data, epochs=40, tol=0.5, progress=False,
                grid={"learning_rate": lrs, "batch_size": [8, 16]}, record_every=3)
    assert {"converged", "diverged"} <= set(res.status.names())
    for i in range(len(res)):
        c = res.config(i)
        alone = fit(linear_loss, p0, data, optimizer="sgd", epochs=40, tol=0.5,
                    record_every=3, **c)
        assert res.status[i] == alone.status and res.steps[i] == alone.steps, c
        np.testing.assert_allclose(res.grad_norm[i], alone.grad_norm, rtol=RTOL)
        r = len(alone.history.step)  # the batch-8 group records more; the rest is padding
        np.testing.assert_allclose(res.history.loss[i, :r], alone.history.loss, rtol=RTOL)
        np.testing.assert_allclose(res.history.grad_norm[i, :r], alone.history.grad_norm,
                                   rtol=RTOL)


def test_fit_style_seed_orders_batches(regression):
    data, p0 = regression
    res = sweep(linear_loss, p0, "sgd", data=data, batch_size=8, epochs=2,
                grid={"seed": [0, 1, 0]})
    np.testing.assert_array_equal(res.params["w"][0], res.params["w"][2])  # same seed, same run
    assert not np.array_equal(res.params["w"][0], res.params["w"][1])


def test_eval_fn_and_record_params(regression):
    data, p0 = regression
    res = sweep(linear_loss, p0, "sgd", data=data, batch_size=16, epochs=4, record_params=True,
                eval_fn=lambda p: {"w0": p["w"][0]}, grid={"learning_rate": [0.05, 0.1]})
    assert res.history.metrics["w0"].shape == (2, 5)
    np.testing.assert_array_equal(res.history.params["w"][:, -1], res.params["w"])


# --- grids --------------------------------------------------------------------------------------


def test_cartesian_product_first_axis_slowest_and_zip():
    res = sweep(bowl, np.float32([1.0]), "momentum", steps=5,
                grid={"learning_rate": [0.1, 0.2], "momentum": [0.0, 0.5, 0.9]})
    assert res.grid["learning_rate"].tolist() == [0.1] * 3 + [0.2] * 3
    assert res.grid["momentum"].tolist() == [0.0, 0.5, 0.9] * 2
    zipped = sweep(bowl, np.float32([1.0]), "momentum", steps=5,
                   grid={"learning_rate": [0.1, 0.2, 0.3], "momentum": [0.0, 0.5, 0.9]},
                   zip_axes=[("learning_rate", "momentum")])
    assert zipped.config(2) == {"learning_rate": 0.3, "momentum": 0.9} and len(zipped) == 3


def test_starts_grid_and_himmelblau_basins():
    starts = starts_grid(functions.himmelblau.domain, 5)
    assert starts.shape == (25, 2) and starts[0].tolist() == [-5.0, -5.0]
    assert starts[1].tolist() == [-5.0, -2.5]
    res = sweep(functions.himmelblau, np.float32([0.0, 0.0]), "adam", steps=2000, tol=1e-3,
                learning_rate=0.05, grid={"x0": starts})
    assert res.counts()["converged"] == 25
    found = np.min(np.linalg.norm(res.params[:, None] - functions.himmelblau.minimizers, axis=-1),
                   axis=1)
    assert np.all(found < 1e-2)


def test_random_axes_are_drawn_per_seed():
    grid = {"learning_rate": LogUniform(1e-4, 1e-1), "x0": Uniform(-2.0, [0.0, 2.0])}
    res = sweep(bowl, np.float32([0.0, 0.0]), "adam", grid=grid, samples=64, steps=3)
    lr, x0 = res.grid["learning_rate"], res.grid["x0"]
    assert res.grid["seed"].tolist() == list(range(64))
    assert np.all((1e-4 <= lr) & (lr < 1e-1)) and len(np.unique(lr)) == 64
    assert np.all((x0 >= -2) & (x0 < [0.0, 2.0])) and x0.dtype == np.float32
    assert lr.min() < 1e-3 and lr.max() > 1e-2  # log-uniform covers the decades
    # A config's draw depends on its seed only: the same seeds elsewhere give the same values.
    again = sweep(bowl, np.float32([0.0, 0.0]), "adam", steps=3, grid={**grid, "seed": [5, 3]})
    np.testing.assert_array_equal(again.grid["learning_rate"], lr[[5, 3]])
    np.testing.assert_array_equal(again.grid["x0"], x0[[5, 3]])


def test_fixed_hyperparameters_and_user_transformation():
    import optax

    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.0)
    res = sweep(bowl, np.float32([1.0]), tx, grid={"momentum": [0.0, 0.5]}, steps=20,
                learning_rate=0.05)
    for i, mu in enumerate([0.0, 0.5]):
        alone = minimize(bowl, np.float32([1.0]), tx, steps=20, learning_rate=0.05, momentum=mu)
        np.testing.assert_allclose(res.params[i], alone.params, rtol=RTOL)


def test_pytree_starts():
    f = lambda p: jnp.sum(p["a"] ** 2) + p["b"] ** 2
    x0 = {"a": np.float32([1.0, 2.0]), "b": np.float32(1.0)}
    starts = {"a": np.float32([[1.0, 1.0], [2.0, 0.0]]), "b": np.float32([3.0, -1.0])}
    res = sweep(f, x0, "sgd", grid={"x0": starts}, steps=10, learning_rate=0.1)
    assert res.params["a"].shape == (2, 2) and res.config(1)["x0"]["b"] == -1.0
    np.testing.assert_allclose(res.params["b"], np.float32([3.0, -1.0]) * 0.8**10, rtol=1e-5)


# --- bad grids: clear errors at call time -------------------------------------------------------


@pytest.mark.parametrize(
    ("grid", "kw", "match"),
    [
        ({"learning_rate": []}, {}, "grid axis 'learning_rate' is empty"),
        ({"learnig_rate": [0.1]}, {}, r"unknown grid axis 'learnig_rate'.*learning_rate, b1, b2"),
        ({"batch_size": [4]}, {}, "unknown grid axis 'batch_size'"),
        ({"x0": np.zeros((3, 3))}, {}, r"shape \(k, \*x0.shape\) = \(k, 2\), got shape \(3, 3\)"),
        ({"x0": np.zeros(2)}, {}, r"got shape \(2,\)"),
        ({"learning_rate": [0.1, np.nan]}, {}, "'learning_rate' must be finite, got .*nan"),
        ({"learning_rate": [0.1, -0.1]}, {}, "'learning_rate'.*positive, got learning_rate=-0.1"),
        ({"b1": [0.9, 1.0]}, {}, r"'b1'.*in \[0, 1\), got b1=1.0"),
        ({"x0": np.array([[0.0, np.inf]])}, {}, "'x0' must be finite"),
        ({"learning_rate": LogUniform(0.0, 1.0)}, {"samples": 2}, "LogUniform needs low > 0"),
        ({"learning_rate": LogUniform(1e-3, 1.0)}, {}, "drawn per seed: add a 'seed' axis"),
        ({"learning_rate": [0.1], "seed": [0]}, {"samples": 3}, "either samples= or a 'seed'"),
        ({"learning_rate": [0.1, 0.2], "b1": [0.9]}, {"zip_axes": [("learning_rate", "b1")]},
         "equal lengths"),
        ({"learning_rate": [0.1]}, {"learning_rate": 0.2}, "both a grid axis and a fixed"),
        ({"seed": [0.5]}, {}, "'seed' must hold integers"),
        ({"learning_rate": [[0.1, 0.2]]}, {}, "must be 1-D"),
    ],
)
def test_bad_grids(grid, kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        sweep(bowl, np.float32([1.0, 2.0]), "adam", grid=grid, steps=2, **kw)


def test_bad_fit_grids(regression):
    data, p0 = regression
    with pytest.raises(ValueError, match="batch_size must be at most the number of samples"):
        sweep(linear_loss, p0, "sgd", data=data, grid={"batch_size": [8, 100]})
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got"):
        sweep(linear_loss, p0, "sgd", data=data, grid={"batch_size": [0]})
    with pytest.raises(ValueError, match="fit-style sweeps .* use autodiff"):
        sweep(linear_loss, p0, "sgd", data=data, grid={}, grad="numerical")


# --- one compiled program -----------------------------------------------------------------------


def test_new_grid_values_never_recompile():
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *_, **__: compiles.append(name)
        if name == "/jax/core/compile/backend_compile_duration" else None
    )
    x0 = np.float32([1.0, -1.0])
    first = sweep(bowl, x0, "momentum", steps=50, momentum=0.9, chunk_size=4,
                  grid={"learning_rate": np.geomspace(1e-3, 1e-1, 6), "x0": np.ones((2, 2))})
    before = len(compiles)
    second = sweep(bowl, x0, "momentum", steps=50, momentum=0.5, chunk_size=4,
                   grid={"learning_rate": np.geomspace(1e-2, 0.5, 6), "x0": np.full((2, 2), 3.0)})
    assert len(compiles) == before  # new values, fixed hyperparameter too: nothing compiled
    assert not np.array_equal(first.params, second.params)
    assert len(compiles) > 0  # the listener did see the first call's compilations


# --- chunks, checkpoints, resume ----------------------------------------------------------------


def test_chunks_and_resume_after_interruption(tmp_path, monkeypatch):
    grid = {"learning_rate": np.geomspace(1e-3, 1.2, 20), "x0": np.float32([[1.0], [-2.0]])}
    kw = dict(steps=200, tol=1e-6, chunk_size=16, progress=False)
    whole = sweep(bowl, np.float32([1.0]), "sgd", grid=grid, **kw)
    assert whole.counts()["diverged"] > 0

    run_chunk, calls, stop = runner.run_chunk, [], {"at": 3}

    class Interrupted(Exception):
        pass

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == stop["at"]:
            stop["at"] = None
            raise Interrupted  # the sweep is stopped (Ctrl-C, a killed job) in its third chunk
        return run_chunk(*args, **kwargs)

    monkeypatch.setattr(runner, "run_chunk", interrupted)
    with pytest.raises(Interrupted):
        sweep(bowl, np.float32([1.0]), "sgd", grid=grid, checkpoint=tmp_path, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g0-c0.npz", "g0-c1.npz",
                                                           "manifest.json"]
    calls.clear()
    resumed = sweep(bowl, np.float32([1.0]), "sgd", grid=grid, checkpoint=tmp_path, **kw)
    assert len(calls) == 1  # 40 configs in chunks of 16: two were on disk, one was left
    assert table_text(resumed) == table_text(whole)
    for field in ("params", "loss", "status", "diverged_at", "steps"):
        np.testing.assert_array_equal(getattr(resumed, field), getattr(whole, field))
    np.testing.assert_array_equal(resumed.history.loss, whole.history.loss)

    calls.clear()  # everything on disk now: nothing runs
    sweep(bowl, np.float32([1.0]), "sgd", grid=grid, checkpoint=tmp_path, **kw)
    assert calls == []
    with pytest.raises(ValueError, match="holds a different sweep"):
        sweep(bowl, np.float32([1.0]), "sgd", grid={**grid, "learning_rate": np.ones(20)},
              checkpoint=tmp_path, **kw)


def test_chunks_and_progress_shows(capsys, monkeypatch):
    chunks = []
    run_chunk = runner.run_chunk
    monkeypatch.setattr(runner, "run_chunk",
                        lambda v, *a, **k: chunks.append(len(v["hyper"]["learning_rate"]))
                        or run_chunk(v, *a, **k))
    lrs = np.linspace(0.1, 0.3, 40)
    res = sweep(bowl, np.float32([1.0]), "sgd", grid={"learning_rate": lrs}, steps=20,
                chunk_size=10, progress=True)  # (tests/test_memory.py: chunks from the budget)
    assert chunks == [16, 16, 16]  # the smallest chunk is 16 configs
    shown = capsys.readouterr()
    assert "3/3 chunks" in shown.err and shown.out == ""  # on stderr: stdout stays clean
    whole = sweep(bowl, np.float32([1.0]), "sgd", grid={"learning_rate": lrs}, steps=20)
    assert chunks[3:] == [40] and capsys.readouterr().err == ""  # one chunk: no progress bar
    np.testing.assert_array_equal(res.params, whole.params)


def test_repr_and_table_top():
    res = sweep(bowl, np.float32([1.0]), "sgd", grid={"learning_rate": [0.1, 0.3, 0.9]}, steps=100,
                tol=1e-6)
    assert "3 configs: 2 converged, 0 max_steps, 1 diverged" in repr(res)
    text = table_text(res, top=2)
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert len(rows) == 2 and "0.3" in rows[0] and not any("diverged" in r for r in rows)


# --- early exit: stopped configs stop costing -----------------------------------------------------


def test_compacted_legs_give_the_results_of_the_full_batch(monkeypatch):
    # 256 configs: most converge within the first segments, some diverge, a few run to the end;
    # with compaction the running ones move into smaller batches (seen by the legs' sizes),
    # and every field of every config is the same as without it, bit for bit.
    monkeypatch.setattr(runner, "COMPACT_MIN", 16)  # (1024 per device otherwise)
    legs = []  # configs per leg: the first runs in program.run, the others in program.leg
    run, leg = runner.program.run, runner.program.leg
    monkeypatch.setattr(runner.program, "run",
                        lambda v, *a: legs.append(len(v["config"])) or run(v, *a))
    monkeypatch.setattr(runner.program, "leg",  # (the chunk's configs, then the rows it runs)
                        lambda v, s, c, b, rows, *a: legs.append(len(rows))
                        or leg(v, s, c, b, rows, *a))
    lrs = np.concatenate([np.linspace(0.2, 0.45, 200), np.full(40, 1e-3), np.linspace(0.6, 1, 16)])
    kw = dict(grid={"learning_rate": lrs.astype(np.float32)}, steps=600, tol=1e-4,
              record_every=7, record_params=True, progress=False)
    compact = sweep(bowl, np.float32([1.0, -0.5]), "sgd", compact=True, **kw)
    sizes = list(legs)
    legs.clear()
    full = sweep(bowl, np.float32([1.0, -0.5]), "sgd", compact=False, **kw)
    assert legs == [256] and sizes[0] == 256 and min(sizes) <= 64, sizes
    assert set(compact.status.names()) == {"converged", "max_steps", "diverged"}
    fields = ("params", "loss", "best_loss", "grad_norm", "status", "steps", "diverged_at",
              "history")
    for a, b in zip(jax.tree.leaves([getattr(compact, f) for f in fields]),
                    jax.tree.leaves([getattr(full, f) for f in fields]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_by_default_a_sweep_compacts_once_it_is_repeated(monkeypatch):
    # compact=None: the first two calls of a sweep run as one program each (no smaller
    # batch compiled); from the third call with the same program and shapes on, the running
    # configs are compacted, with the same results.
    monkeypatch.setattr(runner, "COMPACT_MIN", 16)
    monkeypatch.setattr(runner, "_calls", {})
    legs = []
    leg = runner.program.leg
    monkeypatch.setattr(runner.program, "leg",  # (the chunk's configs, then the rows it runs)
                        lambda v, s, c, b, rows, *a: legs.append(len(rows))
                        or leg(v, s, c, b, rows, *a))
    lrs = np.concatenate([np.linspace(0.2, 0.45, 200), np.full(56, 1e-3)]).astype(np.float32)
    kw = dict(grid={"learning_rate": lrs}, steps=600, tol=1e-4, progress=False)
    results, legs_per_call = [], []
    for _ in range(3):
        results.append(sweep(bowl, np.float32([1.0, -0.5]), "sgd", **kw))
        legs_per_call.append(list(legs))
        legs.clear()
    assert legs_per_call[0] == legs_per_call[1] == [] and legs_per_call[2], legs_per_call
    # with several processes the default never compacts: every process must run the same
    # programs, whatever sweeps each ran before
    monkeypatch.setattr(runner, "_processes", lambda: 2)
    sweep(bowl, np.float32([1.0, -0.5]), "sgd", **kw)
    assert legs == [], legs
    # a sweep whose chunk could take COMPACT_WORK config-steps compacts at its first call
    monkeypatch.setattr(runner, "_processes", lambda: 1)
    monkeypatch.setattr(runner, "COMPACT_WORK", 600 * 256)
    first = sweep(bowl, np.float32([1.0, -0.5]), "sgd", **{**kw, "steps": 601})
    assert legs, legs
    assert set(first.status.names()) == {"converged", "max_steps"}
    fields = ("params", "loss", "best_loss", "grad_norm", "status", "steps", "history")
    for r in results[1:]:
        for a, b in zip(jax.tree.leaves([getattr(results[0], f) for f in fields]),
                        jax.tree.leaves([getattr(r, f) for f in fields]), strict=True):
            np.testing.assert_array_equal(a, b)
