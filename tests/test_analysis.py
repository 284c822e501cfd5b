"""SweepResult analysis: best by any metric and mode, reduced over seeds; summary by axes;
to_pandas; eval_fn metrics in all of them. Oracles are plain Python loops over the configs."""

import sys

import jax.numpy as jnp
import numpy as np
import pytest

import gdjax
from gdjax.engine import History
from gdjax.results import SweepResult

LRS = np.repeat([0.01, 0.1, 1.0], 4)
SEEDS = np.tile(np.arange(4), 3)


def handmade():
    """12 configs (3 learning rates x 4 seeds) with an ``eval_fn`` metric ``acc`` and a nested
    one; config 11 diverged with the best numbers of all, which must never win."""
    rng = np.random.default_rng(0)
    n, r = len(LRS), 5
    loss = rng.uniform(0.1, 1.0, n)
    loss[0] = 0.01  # the best single config sits in the worst learning rate on average
    loss[1:4] = 0.99
    loss[11] = 1e-9
    acc = rng.uniform(0.5, 0.9, (n, r))
    acc[11, -1] = 1.0
    status = np.full(n, 2)
    status[11] = 3
    return SweepResult(
        grid={"learning_rate": LRS, "seed": SEEDS,
              "x0": rng.normal(size=(n, 2)).astype(np.float32)},
        params={"w": rng.normal(size=(n, 2, 2)), "b": rng.normal(size=n)},
        loss=loss, best_loss=loss / 2, grad_norm=rng.uniform(0, 1, n), status=status,
        steps=np.full(n, 50), diverged_at=np.where(status == 3, 7, -1),
        history=History(step=np.tile(np.arange(r), (n, 1)), loss=np.ones((n, r)),
                        grad_norm=np.ones((n, r)),
                        metrics={"acc": acc, "test": {"loss": acc * 2}}))


def alive(res):
    return [i for i in range(len(res)) if res.status[i] != "diverged"]


def test_best_by_a_metric_and_a_mode():
    res = handmade()
    acc = res.history.metrics["acc"][:, -1]
    want = max(alive(res), key=lambda i: acc[i])
    best = res.best("acc", "max")
    assert best.index == want and best.value == acc[want] and best.configs == (want,)
    assert res.best("acc", "min").index == min(alive(res), key=lambda i: acc[i])
    assert res.best("test.loss", "max").index == want
    assert res.best("grad_norm").index == min(alive(res), key=lambda i: res.grad_norm[i])
    assert res.best().index == 0 == min(alive(res), key=lambda i: res.loss[i])


@pytest.mark.parametrize("reduce", ["mean", "median", "min", "max"])
def test_best_reduced_over_seeds(reduce):
    res = handmade()
    fn = {"mean": np.mean, "median": np.median, "min": np.min, "max": np.max}[reduce]
    scores = {}
    for lr in np.unique(LRS):
        members = [i for i in range(len(res)) if LRS[i] == lr]
        if all(i in alive(res) for i in members):  # a diverged seed makes its group the worst
            scores[lr] = fn([res.loss[i] for i in members])
    lr = min(scores, key=scores.get)
    best = res.best(reduce=reduce)
    assert best.config == {"learning_rate": lr}
    assert best.value == pytest.approx(scores[lr])
    assert best.configs == tuple(i for i in range(len(res)) if LRS[i] == lr)
    assert best.index == min(best.configs, key=lambda i: res.loss[i])
    if reduce == "mean":
        assert best.config != res.best().config  # reducing changes the winner here


def test_summary_by_an_axis():
    res = handmade()
    acc = res.history.metrics["acc"][:, -1]
    table = res.summary(by=["learning_rate"])
    assert table["learning_rate"].tolist() == [0.01, 0.1, 1.0]
    assert table["configs"].tolist() == [4, 4, 4] and table["diverged"].tolist() == [0, 0, 1]
    for row, lr in enumerate(np.unique(LRS)):
        kept = [i for i in alive(res) if LRS[i] == lr]
        for name, values in (("loss", res.loss), ("acc", acc)):
            v = np.array([values[i] for i in kept])
            assert table[f"{name} mean"][row] == pytest.approx(v.mean())
            assert table[f"{name} std"][row] == pytest.approx(v.std())
            assert table[f"{name} min"][row] == v.min()
            assert table[f"{name} max"][row] == v.max()
    everything = res.summary(by=[], metrics=["grad_norm"])
    assert everything["configs"].tolist() == [12]
    assert everything["grad_norm max"][0] == max(res.grad_norm[i] for i in alive(res))


def test_to_pandas_one_row_per_config_with_dotted_names():
    res = handmade()
    frame = res.to_pandas()
    assert len(frame) == len(res)
    assert list(frame.columns) == [
        "config", "learning_rate", "seed", "x0.0", "x0.1", "status", "loss", "best_loss",
        "grad_norm", "steps", "diverged_at", "acc", "test.loss", "params.b", "params.w.0.0",
        "params.w.0.1", "params.w.1.0", "params.w.1.1"]
    assert frame["status"].tolist() == ["max_steps"] * 11 + ["diverged"]
    np.testing.assert_array_equal(frame["params.w.1.0"], res.params["w"][:, 1, 0])
    np.testing.assert_array_equal(frame["x0.1"], res.grid["x0"][:, 1])
    np.testing.assert_array_equal(frame["acc"], res.history.metrics["acc"][:, -1])
    mean = frame[frame.status != "diverged"].groupby("learning_rate")["loss"].mean()
    np.testing.assert_allclose(mean.to_numpy(), res.summary(by=["learning_rate"])["loss mean"])


def test_to_pandas_without_pandas_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with pytest.raises(ImportError, match="to_pandas needs pandas.*pip install pandas"):
        handmade().to_pandas()


def test_bad_analysis_arguments_are_named():
    res = handmade()
    with pytest.raises(ValueError, match=r"metric must be one of .*'acc'.*got metric='accuracy'"):
        res.best("accuracy")
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        res.best(mode="maximum")
    with pytest.raises(ValueError, match="reduce must be None or one of"):
        res.best(reduce="sum")
    with pytest.raises(ValueError, match="by must name grid axes other than x0"):
        res.summary(by=["x0"])


def test_eval_fn_metrics_of_a_real_sweep_survive_npz(tmp_path):
    """eval_fn's value at the final parameters is its last record: the same as evaluating it
    on result.params."""
    target = np.float32([1.0, -2.0])
    f = lambda x: jnp.sum((x - target) ** 2)  # noqa: E731
    res = gdjax.sweep(f, np.zeros(2, np.float32), "sgd",
                      grid={"learning_rate": [0.01, 0.1, 0.3]}, steps=7, progress=False,
                      eval_fn=lambda x: {"dist": jnp.linalg.norm(x - target)})
    dist = np.linalg.norm(res.params - target, axis=1)
    np.testing.assert_allclose(res.metrics()["dist"], dist, rtol=1e-6)
    assert res.best("dist").index == int(np.argmin(dist))
    res.to_npz(tmp_path / "r.npz")
    back = gdjax.load(tmp_path / "r.npz")
    np.testing.assert_array_equal(back.metrics()["dist"], res.metrics()["dist"])
    assert back.best("dist", "max").index == int(np.argmax(dist))


def test_npz_round_trip_is_exact_and_history_optional(tmp_path):
    res = handmade()
    res.to_npz(tmp_path / "all.npz")
    back = gdjax.load(tmp_path / "all.npz")
    for name in ("loss", "best_loss", "grad_norm", "steps", "diverged_at"):
        a, b = np.asarray(getattr(res, name)), np.asarray(getattr(back, name))
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert back.status.tolist() == res.status.tolist()
    for name in res.grid:
        np.testing.assert_array_equal(back.grid[name], res.grid[name])
    assert back.grid["x0"].dtype == np.float32
    np.testing.assert_array_equal(back.params["w"], res.params["w"])
    np.testing.assert_array_equal(back.history.metrics["test"]["loss"],
                                  res.history.metrics["test"]["loss"])
    res.to_npz(tmp_path / "small.npz", history=False)
    assert gdjax.load(tmp_path / "small.npz").history is None
    assert (tmp_path / "small.npz").stat().st_size < (tmp_path / "all.npz").stat().st_size
    (tmp_path / "cut.npz").write_bytes((tmp_path / "all.npz").read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cut.npz' is not a gdjax sweep .npz file"):
        gdjax.load(tmp_path / "cut.npz")


def test_npz_stores_a_step_row_shared_by_every_config_once(tmp_path):
    res = handmade()
    step = np.broadcast_to(np.arange(5), (len(res), 5))  # how a sweep shares one row of steps
    shared = SweepResult(**{**res.__dict__, "history": res.history._replace(step=step)})
    shared.to_npz(tmp_path / "shared.npz")
    back = gdjax.load(tmp_path / "shared.npz").history.step
    np.testing.assert_array_equal(back, step)
    assert back.strides[0] == 0 and not back.flags.writeable
