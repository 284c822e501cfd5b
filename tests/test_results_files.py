"""Results files round-trip or refuse: any grid axis name, any params key, and a file that was
cut short, emptied or edited is an error that names it (issue 15's CSV and JSON cases)."""

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdjax.engine import Status
from gdjax.results import StatusArray, SweepResult, load


def result(grid=None, params=None):
    """Three configs, every status, float32 outcomes."""
    return SweepResult(
        grid=grid or {"learning_rate": np.array([0.1, 0.2, 1 / 3])},
        params=params if params is not None else np.float32([[1, 2], [3, 4], [5, 6]]) / 7,
        loss=np.float32([0.5, 1 / 3, np.nan]), best_loss=np.float32([0.25, 0.1, np.inf]),
        grad_norm=np.float32([1e-7, 3.0, 5.0]),
        status=np.array(["converged", "max_steps", "diverged"]),
        steps=np.array([10, 20, 0], np.int32), diverged_at=np.array([-1, -1, 0], np.int32),
    )


def assert_same(back, res):
    assert list(back.grid) == list(res.grid)
    for name, values in res.grid.items():
        np.testing.assert_array_equal(back.grid[name], values)
    for name in ("loss", "best_loss", "grad_norm", "status", "steps", "diverged_at"):
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name))


@pytest.mark.parametrize("names", [("steps", "status", "config"), ("loss", "diverged_at"),
                                   ("x0.scale", "params:0", "params"), ("a,b", 'say "x"\n')])
def test_csv_keeps_any_grid_axis_name(tmp_path, names):
    grid = {name: np.array([1.5, 2.0, -3.0]) * (i + 1) for i, name in enumerate(names)}
    res = result(grid=grid)
    res.to_csv(tmp_path / "r.csv")
    back = load(tmp_path / "r.csv")
    assert_same(back, res)
    np.testing.assert_array_equal(back.params, res.params)


def test_csv_keeps_x0_beside_an_axis_named_like_one_of_its_leaves(tmp_path):
    res = result(grid={"x0": {"scale": np.float32([[1, 2], [3, 4], [5, 6]])},
                       "x0.scale": np.array([7.0, 8.0, 9.0])})
    res.to_csv(tmp_path / "r.csv")
    back = load(tmp_path / "r.csv")
    np.testing.assert_array_equal(back.grid["x0"]["['scale']"], res.grid["x0"]["scale"])
    np.testing.assert_array_equal(back.grid["x0.scale"], [7.0, 8.0, 9.0])


def test_csv_keeps_params_keys_with_colons_and_brackets(tmp_path):
    params = {"w:1": np.float32([[1, 2], [3, 4], [5, 6]]), "b]:0": np.float64([1, 2, 3]),
              "nested": {"k": np.zeros((3, 2, 2))}}
    result(params=params).to_csv(tmp_path / "r.csv")
    back = load(tmp_path / "r.csv")
    assert set(back.params) == {"['w:1']", "['b]:0']", "['nested']['k']"}
    np.testing.assert_array_equal(back.params["['w:1']"], params["w:1"])
    np.testing.assert_array_equal(back.params["['b]:0']"], params["b]:0"])
    assert back.params["['nested']['k']"].shape == (3, 2, 2)


CUTS = {
    "the last row dropped": lambda text: text[: text.rstrip("\n").rindex("\n") + 1],
    "the last field cut": lambda text: text.rstrip("\n")[:-2] + "\n",
    "a number edited": lambda text: text.replace("0.1,", "0.2,", 1),
    "only the first line": lambda text: text[: text.index("\n") + 1],
}


@pytest.mark.parametrize("cut", CUTS)
def test_csv_cut_short_or_edited_is_refused(tmp_path, cut):
    path = tmp_path / "r.csv"
    result().to_csv(path)
    path.write_text(CUTS[cut](path.read_text()))
    with pytest.raises(ValueError, match=rf"'{path}' was cut short or edited after it was"):
        load(path)


@pytest.mark.parametrize("text, match", [
    ("", "is empty"),
    ("config,learning_rate\n0,0.1\n", "is not a gdjax sweep CSV: its first line"),
    ("# gdjax.SweepResult {\"rows\n", "is not a gdjax sweep CSV: its first line"),
])
def test_csv_that_is_empty_or_foreign_is_named(tmp_path, text, match):
    path = tmp_path / "r.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"'{path}' {match}"):
        load(path)


def test_csv_refuses_a_grid_axis_of_text(tmp_path):
    with pytest.raises(TypeError, match="grid axis 'name'.*not numbers; use to_json"):
        result(grid={"name": np.array(["a", "b", "c"])}).to_csv(tmp_path / "r.csv")


def test_json_cut_short_empty_or_short_is_named(tmp_path):
    path = tmp_path / "r.json"
    result().to_json(path)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=rf"'{path}' is not readable JSON .*cut short"):
        load(path)
    path.write_text("")
    with pytest.raises(ValueError, match=rf"'{path}' is empty"):
        load(path)
    doc = json.loads(text)
    doc["loss"]["array"]["data"].pop()
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=rf"'{path}' is not a valid gdjax sweep JSON file"):
        load(path)
    doc = json.loads(text)
    doc["steps"] = {"array": {"dtype": "int32", "shape": [2], "data": [1, 2]}}
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"steps holds an array of shape \(2,\), not one entry"):
        load(path)


@pytest.mark.parametrize("ext", ["csv", "json"])
def test_statuses_reload_as_a_status_array(tmp_path, ext):
    path = tmp_path / f"r.{ext}"
    (result().to_csv if ext == "csv" else result().to_json)(path)
    back = load(path)
    assert type(back.status) is StatusArray
    assert back.status[2] is Status.DIVERGED and back.result(0).status is Status.CONVERGED
    assert back.status.tolist() == ["converged", "max_steps", "diverged"]


class Pair(NamedTuple):
    w: np.ndarray
    b: np.ndarray


@jax.tree_util.register_pytree_with_keys_class
class Box:
    """A user's registered pytree node (as a flax FrozenDict or an equinox module is)."""

    def __init__(self, inner):
        self.inner = inner

    def tree_flatten_with_keys(self):
        return ((jax.tree_util.GetAttrKey("inner"), self.inner),), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_other_pytree_nodes_are_written_and_read_back_as_dicts_with_a_warning(tmp_path, suffix):
    params = Pair(w=np.float32([[1, 2], [3, 4], [5, 6]]), b=Box(np.float32([[7], [8], [9]])))
    res = result(params=params)
    getattr(res, "to_" + suffix[1:])(tmp_path / ("r" + suffix))
    with pytest.warns(UserWarning) as said:
        back = load(tmp_path / ("r" + suffix))
    said = sorted(str(w.message) for w in said)
    assert "Box is read back as a dict of its children ['inner']" in said[0]
    assert "Pair is read back as a dict of its children ['b', 'w']" in said[1]
    assert_same(back, res)
    np.testing.assert_array_equal(back.params["w"], params.w)
    np.testing.assert_array_equal(back.params["b"]["inner"], params.b.inner)


@pytest.mark.parametrize("ext", [".json", ".npz"])
def test_a_leaf_that_is_not_an_array_is_named_and_read_back_as_none(tmp_path, ext):
    # a model's function (an equinox module's activation) is not data: the arrays beside it are
    # written in full, and a warning names what is not
    res = result(params={"w": np.arange(6.0).reshape(3, 2), "act": jnp.tanh})
    path = tmp_path / f"r{ext}"
    with pytest.warns(UserWarning, match=r"not written to .*params\['act'\]"):
        res.to_json(path) if ext == ".json" else res.to_npz(path)
    back = load(path)
    assert back.params["act"] is None
    np.testing.assert_array_equal(back.params["w"], res.params["w"])
