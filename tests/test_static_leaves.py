"""Static leaves (issue 17): pytrees holding leaves that are not trained.

An ``equinox`` module passed as it is (its activation function a leaf), ``None``, Python ints,
integer arrays: the public functions differentiate and train the inexact arrays and carry the
rest unchanged (:func:`gdjax.inputs.trainable`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import gdjax
from gdjax import inputs, sharpness

eqx = pytest.importorskip("equinox")

X = jnp.linspace(-1.0, 1.0, 10, dtype=jnp.float32).reshape(5, 2)


def _mlp(seed=0):
    return eqx.nn.MLP(2, 1, 4, 1, activation=jax.nn.tanh, key=jax.random.key(seed))


def _loss(model):
    return jnp.mean((jax.vmap(model)(X) - 0.5) ** 2)


def _mixed():
    return {"w": jnp.array([0.5, -0.3]), "n": 3, "k": jnp.arange(2), "z": None,
            "act": jax.nn.tanh, "s": 0.5}


def _mixed_loss(p):
    return jnp.sum(p["act"](p["w"]) ** 2 * p["n"]) + p["s"] ** 2 + jnp.sum(p["k"])


# --- the split -------------------------------------------------------------------------------


def test_trainable_splits_off_the_static_leaves_and_rebuild_puts_them_back():
    tree = _mixed()
    train, rebuild = inputs.trainable("x0", tree)
    assert train["n"] is None and train["k"] is None and train["act"] is None
    assert train["z"] is None
    assert isinstance(train["s"], jax.Array)  # a Python float is trained, as an array
    assert train["w"] is tree["w"]
    back = rebuild(train)
    assert back["n"] == 3 and type(back["n"]) is int
    assert back["k"] is tree["k"] and back["act"] is jax.nn.tanh and back["z"] is None
    assert jax.tree.structure(back) == jax.tree.structure(tree)


def test_all_trained_is_the_fast_path():
    x = jnp.ones(3)
    assert inputs.trainable("x", x) == (x, None)
    train, rebuild = inputs.trainable("x", {"a": 1.0, "b": np.ones(2)})
    assert rebuild is None and isinstance(train["a"], jax.Array)
    assert inputs.bind(_loss, None) is _loss


def test_rebuild_takes_batched_and_traced_leaves():
    train, rebuild = inputs.trainable("x0", _mixed())
    batched = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), train)
    back = rebuild(batched)
    assert back["w"].shape == (2, 2) and back["n"] == 3 and back["act"] is jax.nn.tanh
    value = jax.jit(lambda t: _mixed_loss(rebuild(t)))(train)
    assert float(value) == pytest.approx(float(_mixed_loss(_mixed())))


def test_rebuild_and_bind_are_equal_for_the_same_model():
    model = _mlp()
    (_, r1), (_, r2) = inputs.trainable("x0", model), inputs.trainable("x0", model)
    assert r1 is not r2 and r1 == r2 and hash(r1) == hash(r2)
    assert inputs.bind(_loss, r1) == inputs.bind(_loss, r2)
    assert hash(inputs.bind(_loss, r1)) == hash(inputs.bind(_loss, r2))
    other = eqx.tree_at(lambda m: m.activation, model, jax.nn.relu)
    assert inputs.trainable("x0", other)[1] != r1
    # hashable leaves by value, arrays by identity
    assert inputs.trainable("x", {"w": 1.0, "n": 3})[1] == inputs.trainable(
        "x", {"w": 2.0, "n": 3})[1]
    assert inputs.trainable("x", {"w": 1.0, "n": 3})[1] != inputs.trainable(
        "x", {"w": 1.0, "n": 4})[1]
    assert inputs.trainable("x", {"w": 1.0, "n": True})[1] != inputs.trainable(
        "x", {"w": 1.0, "n": 1})[1]
    k = jnp.arange(2)
    assert inputs.trainable("x", {"w": 1.0, "k": k})[1] == inputs.trainable(
        "x", {"w": 1.0, "k": k})[1]
    assert inputs.trainable("x", {"w": 1.0, "k": k})[1] != inputs.trainable(
        "x", {"w": 1.0, "k": jnp.arange(2)})[1]


def test_nothing_to_train_is_refused_naming_what_was_found():
    with pytest.raises(TypeError) as info:
        gdjax.minimize(lambda p: 0.0, {"n": jnp.arange(3), "activation": jax.nn.tanh,
                                       "z": None})
    assert str(info.value).startswith(
        "x0 must contain at least one floating-point array to train, found: "
        "function at ['activation'], int32 array at ['n']")
    with pytest.raises(TypeError, match=r"found: int at \['a'\], bool at \['b'\]$"):
        gdjax.numerical_gradient(lambda p: 0.0, {"a": 1, "b": True})
    # a whole argument of the wrong kind keeps its message
    with pytest.raises(TypeError, match=r"x0 must hold floating-point arrays; x0 has dtype int32"):
        gdjax.minimize(lambda p: 0.0, jnp.arange(3))
    with pytest.raises(ValueError, match=r"x must not hold empty arrays; leaf \['e'\] has size 0"):
        gdjax.check_grads(lambda p: 0.0, {"e": jnp.zeros(0), "n": 1})
    with pytest.raises(ValueError, match=r"x0 must contain at least one array, got x0=\{'z'"):
        gdjax.minimize(lambda p: 0.0, {"z": None})


def test_float_params_still_refuses_static_leaves_by_name():
    with pytest.raises(TypeError, match=r"p must hold floating-point arrays; leaf \['n'\] has "
                                        r"dtype int32"):
        inputs.float_params("p", {"w": jnp.ones(2), "n": jnp.arange(2)})
    with pytest.raises(TypeError, match=r"leaf \.activation is a function"):
        inputs.float_params("p", _mlp())


# --- check_grads -----------------------------------------------------------------------------


@jax.custom_vjp
def _one_percent_wrong(w):
    return w


_one_percent_wrong.defvjp(lambda w: (w, None), lambda _, g: (1.01 * g,))


def test_check_grads_takes_an_mlp_and_locates_a_wrong_rule_in_its_leaf():
    model = _mlp()
    assert gdjax.check_grads(_loss, model).ok

    def wrong(m):
        return _loss(eqx.tree_at(lambda m: m.layers[1].weight, m,
                                 _one_percent_wrong(m.layers[1].weight)))

    report = gdjax.check_grads(wrong, model, modes=("rev",))
    assert not report.ok and report.kind == "wrong gradient"
    assert report.leaf == ".layers[1].weight"
    assert "x.layers[1].weight at index" in str(report)
    with pytest.raises(AssertionError, match=r"layers\[1\]\.weight"):
        gdjax.assert_grads_close(wrong, model, modes=("rev",))


def test_check_grads_paths_name_the_leaf_in_the_callers_tree():
    def wrong(p):
        return jnp.sum(_one_percent_wrong(p["w"]) ** 2 * p["n"]) + p["b"] ** 2

    report = gdjax.check_grads(wrong, {"a_int": jnp.arange(3), "b": 1.5, "n": 2, "w": jnp.ones(3)},
                               modes=("rev",))
    assert report.leaf == "['w']"


# --- finite differences and curvature --------------------------------------------------------


def test_numerical_gradient_of_an_mlp_matches_autodiff_with_none_at_static_leaves():
    model = _mlp()
    g = gdjax.numerical_gradient(_loss, model, method="richardson")
    expected = eqx.filter_grad(_loss)(model)
    assert g.activation is None and g.final_activation is None
    assert jax.tree.structure(g) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=1e-4)


def test_directional_derivative_takes_v_in_full_or_as_the_trained_part():
    p = _mixed()
    full = dict(p, w=jnp.array([1.0, 0.0]), s=0.0)  # static leaves of v are ignored
    part = {"w": jnp.array([1.0, 0.0]), "s": 0.0, "n": None, "k": None, "z": None, "act": None}
    d_full = gdjax.directional_derivative(_mixed_loss, p, full)
    d_part = gdjax.directional_derivative(_mixed_loss, p, part)
    grad = jax.grad(lambda w: _mixed_loss(dict(p, w=w)))(p["w"])
    assert float(d_full) == pytest.approx(float(grad[0]), rel=1e-3)
    assert float(d_part) == float(d_full)


def test_curvature_functions_take_an_mlp():
    model = _mlp()
    train, static = eqx.partition(model, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(train)
    hessian = jax.jit(jax.hessian(lambda z: _loss(eqx.combine(unravel(z), static))))(flat)
    top = float(jnp.linalg.eigvalsh(hessian)[-1])
    eig = sharpness.hessian_top_eigenvalue(_loss, model, num_iters=200, tol=1e-6)
    assert float(eig.eigenvalue) == pytest.approx(top, rel=1e-3)
    assert eig.vector.activation is None
    hv = sharpness.hvp(_loss, model, model)  # v in full: its activation is ignored
    np.testing.assert_allclose(ravel_pytree(hv)[0], hessian @ flat, rtol=1e-4,
                               atol=1e-6)
    values = sharpness.interpolate(_loss, model, _mlp(1), jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(values, [_loss(model), _loss(_mlp(1))], rtol=1e-6)


# --- minimize --------------------------------------------------------------------------------


def test_minimize_trains_an_mlp_and_returns_one_without_retracing():
    model = _mlp()
    traces = []

    def loss(m):
        traces.append(1)
        return _loss(m)

    res = gdjax.minimize(loss, model, "adam", learning_rate=0.05, steps=50, record_every=10,
                         record_params=True)
    assert isinstance(res.params, eqx.nn.MLP)
    assert res.params.activation is model.activation
    assert res.params.final_activation is model.final_activation
    assert not np.allclose(res.params.layers[0].weight, model.layers[0].weight)
    assert float(res.loss) < float(_loss(model))
    assert float(res.loss) == pytest.approx(float(_loss(res.params)), rel=1e-5)
    assert isinstance(res.history.params, eqx.nn.MLP)
    assert res.history.params.layers[0].weight.shape == (6, 4, 2)
    assert res.history.params.activation is model.activation
    n = len(traces)
    again = gdjax.minimize(loss, model, "adam", learning_rate=0.05, steps=50, record_every=10,
                           record_params=True)
    assert len(traces) == n, "the second call with the same model retraced"
    assert float(again.loss) == float(res.loss)


def test_minimize_carries_int_and_none_leaves():
    res = gdjax.minimize(_mixed_loss, _mixed(), "sgd", learning_rate=0.05, steps=200)
    assert res.params["n"] == 3 and type(res.params["n"]) is int
    assert res.params["k"].dtype == jnp.int32 and res.params["k"].tolist() == [0, 1]
    assert res.params["z"] is None and res.params["act"] is jax.nn.tanh
    assert float(res.loss) < 1.01 and abs(float(res.params["s"])) < 0.1  # sum(k) = 1 stays
    x = gdjax.gradient_descent(_mixed_loss, _mixed(), lr=0.05, step_num=5)
    assert x["n"] == 3 and x["z"] is None and float(x["s"]) < 0.5


def test_python_floats_train_in_plain_containers_and_are_carried_as_a_modules_settings():
    # x0=[-3.0, 4.0] or {"w": 0.5} are numbers to train; a module's float field (a dropout
    # rate, a norm's eps) is a setting, carried as equinox's is_inexact_array rule says
    train, rebuild = inputs.trainable("x0", [-3.0, 4.0])
    assert rebuild is None and all(isinstance(a, jax.Array) for a in train)
    train, rebuild = inputs.trainable("x0", {"w": 0.5, "n": 3})
    assert isinstance(train["w"], jax.Array) and train["n"] is None

    class Net(eqx.Module):
        lin: eqx.nn.Linear
        drop: eqx.nn.Dropout

    net = Net(eqx.nn.Linear(2, 1, key=jax.random.key(0)), eqx.nn.Dropout(0.3))
    train, rebuild = inputs.trainable("x0", net)
    assert train.drop.p is None and isinstance(train.lin.weight, jax.Array)
    res = gdjax.minimize(lambda m: jnp.sum(m.lin(jnp.ones(2)) ** 2), net, "sgd",
                         learning_rate=0.1, steps=5)
    assert res.params.drop.p == 0.3 and type(res.params.drop.p) is float
