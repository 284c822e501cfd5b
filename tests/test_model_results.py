"""A sweep over an equinox model passed as it is: checkpoints that resume and tell models apart,
and result files that keep every array (its functions are named in a warning, not written)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gdjax

eqx = pytest.importorskip("equinox")

X = jnp.linspace(-1.0, 1.0, 32)[:, None]
Y = jnp.sin(3 * X)
GRID = {"learning_rate": [1e-3, 1e-2], "seed": [0, 1]}


def loss(model, batch):
    x, y = batch
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


def model(activation=jax.nn.relu):
    return eqx.nn.MLP(1, 1, 8, 1, activation=activation, key=jax.random.key(0))


def run(m, **kw):
    return gdjax.sweep(loss, m, "adam", data=(X, Y), batch_size=8, epochs=2, grid=GRID,
                       progress=False, **kw)


def test_checkpoint_resumes_a_module_sweep_and_tells_activations_apart(tmp_path):
    first = run(model(), checkpoint=tmp_path)
    assert isinstance(first.params, eqx.nn.MLP)
    assert first.params.activation is jax.nn.relu
    again = run(model(), checkpoint=tmp_path)  # every chunk read back from the directory
    np.testing.assert_array_equal(again.loss, first.loss)
    np.testing.assert_array_equal(again.params.layers[0].weight, first.params.layers[0].weight)
    with pytest.raises(gdjax.CheckpointError, match="objective"):
        run(model(jnp.tanh), checkpoint=tmp_path)  # the same arrays, another function


@pytest.mark.parametrize("ext", [".npz", ".json"])
def test_result_files_keep_a_modules_arrays_and_name_its_functions(tmp_path, ext):
    res = run(model())
    path = tmp_path / f"r{ext}"
    with pytest.warns(UserWarning, match=r"params\.activation, params\.final_activation"):
        res.to_npz(path) if ext == ".npz" else res.to_json(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (read back as dicts: said by another warning)
        back = gdjax.load(path)
    assert back.params["activation"] is None
    for i, layer in enumerate(res.params.layers):
        np.testing.assert_allclose(back.params["layers"][i]["weight"], layer.weight, rtol=1e-7)
        np.testing.assert_allclose(back.params["layers"][i]["bias"], layer.bias, rtol=1e-7)
    np.testing.assert_array_equal(back.loss, res.loss)


def test_tables_of_a_module_sweep_have_its_arrays_as_columns(tmp_path):
    res = run(model())
    columns = res.to_pandas().columns
    assert any(c.startswith("params.layers.0.weight") for c in columns)
    assert not any("activation" in c for c in columns)
    res.to_csv(tmp_path / "r.csv")
    back = gdjax.load(tmp_path / "r.csv")  # a dict keyed by leaf path
    np.testing.assert_allclose(back.params[".layers[1].bias"], res.params.layers[1].bias,
                               rtol=1e-6)
    rows = res.summary("learning_rate")  # one axis may be named alone
    np.testing.assert_array_equal(rows["learning_rate"], [1e-3, 1e-2])
