"""SweepResult: best, counts, config, table, and exact CSV / JSON round trips."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdjax.engine import History
from gdjax.results import SweepResult, load
from gdjax.sweep import sweep


@pytest.fixture(scope="module")
def result():
    """A real sweep: float32 starts and learning rates, some configs diverged."""
    f = lambda x: 0.5 * 4.0 * jnp.sum(x**2)
    return sweep(f, np.float32([1.0, -0.5]), "momentum", steps=200, tol=1e-6, momentum=0.3,
                 grid={"learning_rate": [1 / 3, 0.1, 0.7, 0.2], "x0": np.float32([[1, 2], [3, 0]])})


def handmade(**changes):
    """A pytree of parameters, metrics and a non-finite best loss (diverged at its start)."""
    fields = dict(
        grid={"learning_rate": np.array([0.1, 0.2, 0.3]), "seed": np.array([0, 1, 2])},
        params={"w": np.arange(6, dtype=np.float32).reshape(3, 2) / 7, "b": np.float64([1, 2, 3])},
        loss=np.float32([0.5, np.float32(1) / 3, 2.0]),
        best_loss=np.float32([0.25, 0.1, np.inf]),
        grad_norm=np.float32([1e-7, 3.0, 5.0]),
        status=np.array(["converged", "max_steps", "diverged"]),
        steps=np.array([10, 20, 0], np.int32),
        diverged_at=np.array([-1, -1, 0], np.int32),
        history=History(
            step=np.tile(np.int32([0, 10, 20]), (3, 1)),
            loss=np.float32([[1, 0.5, 0.5], [2, 1, 1 / 3], [2, 2, 2]]),
            grad_norm=np.ones((3, 3), np.float32),
            params=None,
            metrics={"acc": np.float32([[0.1, 0.2, 0.3]] * 3), "pair": (np.zeros((3, 3)),)},
        ),
    )
    return SweepResult(**{**fields, **changes})


def assert_same(a, b):
    """Equal values, dtypes and structure (NaN equals NaN)."""
    ta, tb = jax.tree.structure((a.grid, a.params, a.history)), jax.tree.structure(
        (b.grid, b.params, b.history)
    )
    assert ta == tb
    for x, y in zip(jax.tree.leaves((a.grid, a.params, a.history)),
                    jax.tree.leaves((b.grid, b.params, b.history)), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)
    for name in ("loss", "best_loss", "grad_norm", "status", "steps", "diverged_at"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def test_len_counts_config_best(result):
    assert len(result) == 8
    assert result.counts() == {"converged": 6, "max_steps": 0, "diverged": 2}
    assert result.status.tolist().count("diverged") == 2
    c = result.config(3)  # learning_rate is the slower axis: index 1 of it, start 1
    assert c["learning_rate"] == 0.1 and c["x0"].tolist() == [3.0, 0.0]
    best = result.best()
    assert result.status[best.index] == "converged"
    assert best.loss == result.loss.min(where=result.status != "diverged", initial=np.inf)
    np.testing.assert_array_equal(best.params, result.params[best.index])
    assert result.config(-1)["learning_rate"] == result.config(7)["learning_rate"] == 0.2
    with pytest.raises(IndexError, match="config index must be an integer in"):
        result.config(8)


def test_best_when_everything_diverged():
    res = handmade(status=np.array(["diverged"] * 3))
    with pytest.raises(ValueError, match="no config has a finite final loss"):
        res.best()


def test_json_round_trip_is_exact(result, tmp_path):
    result.to_json(tmp_path / "r.json")
    back = SweepResult.from_json(tmp_path / "r.json")
    assert_same(back, result)
    assert back.loss.dtype == np.float32 and back.grid["learning_rate"].dtype == np.float64
    assert back.grid["learning_rate"][0] == 1 / 3  # a float64 that needs all 17 digits


def test_json_keeps_pytrees_and_non_finite_values(tmp_path):
    res = handmade()
    res.to_json(tmp_path / "h.json")
    text = (tmp_path / "h.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    back = load(tmp_path / "h.json")
    assert_same(back, res)
    assert isinstance(back.history.metrics["pair"], tuple) and back.history.params is None


def test_csv_round_trip_is_exact(result, tmp_path):
    result.to_csv(tmp_path / "r.csv")
    first, header = (tmp_path / "r.csv").read_text().splitlines()[:2]
    assert first.startswith("# gdjax.SweepResult {") and '"rows": 8' in first
    assert header.split(",")[:4] == ["config", "learning_rate", "x0:0", "x0:1"]
    back = load(tmp_path / "r.csv")
    assert back.history is None and len(back) == len(result)
    for name in ("loss", "best_loss", "grad_norm", "status", "steps", "diverged_at"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
    np.testing.assert_array_equal(back.params, result.params)
    np.testing.assert_array_equal(back.grid["x0"], result.grid["x0"])
    np.testing.assert_array_equal(back.grid["learning_rate"], result.grid["learning_rate"])
    # float32 values come back as float64 holding exactly the same numbers
    assert back.loss.dtype == np.float64
    assert np.all(back.loss.astype(np.float32) == result.loss)


def test_csv_pytree_params_come_back_by_leaf_path(tmp_path):
    res = handmade()
    res.to_csv(tmp_path / "h.csv")
    back = SweepResult.from_csv(tmp_path / "h.csv")
    assert set(back.params) == {"['w']", "['b']"}
    np.testing.assert_array_equal(back.params["['w']"], res.params["w"])
    np.testing.assert_array_equal(back.params["['b']"], res.params["b"])
    assert back.best_loss[2] == np.inf and back.grid["seed"].tolist() == [0, 1, 2]


def test_file_errors(tmp_path):
    with pytest.raises(ValueError, match="must end in .json or .csv"):
        load(tmp_path / "r.txt")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="not a gdjax sweep JSON"):
        load(tmp_path / "x.json")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a gdjax sweep CSV"):
        load(tmp_path / "x.csv")
    res = handmade(params={1: np.zeros((3, 1))})
    with pytest.raises(TypeError, match="non-str keys"):
        res.to_json(tmp_path / "bad.json")


def test_table_top_orders_by_loss(result):
    table = result.table(top=3)
    assert table.row_count == 3
    assert "8 configs, 6 converged, 0 max_steps, 2 diverged" in table.title
    assert result.table().row_count == 8
    with pytest.raises(ValueError, match="top must be a positive integer"):
        result.table(top=0)
