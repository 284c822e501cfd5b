"""Models from flax (linen and nnx) and equinox as gdjax inputs (issue 17), with the real libraries.

A small MLP on 256 of scikit-learn's digits (float32, hidden width 8, a few full-batch steps) in
each library's own idiom:

* flax linen with ``BatchNorm`` and ``Dropout``: ``check_grads`` on its parameters (eval mode),
  ``fit(state=batch_stats, rng=True)`` (the batch statistics follow linen's running-average
  recurrence step by step and come back in ``result.state``; dropout keys follow the seed),
  a ``sweep`` of learning rate x seed whose configs repeat ``fit``, ``hessian_top_eigenvalue``
  against SciPy's Lanczos, and a ``FrozenDict`` sweep result written and read back;
* flax nnx with ``Dropout``: ``nnx.split(model, nnx.Param, ...)``, a loss that merges, ``fit``
  with ``rng=True`` and ``check_grads`` on the ``nnx.State``;
* equinox: an ``eqx.nn.MLP`` passed as it is (its activation functions are not arrays) to
  ``check_grads``, ``fit`` and ``hessian_top_eigenvalue``, and a model with ``eqx.nn.BatchNorm``
  (its ``eqx.nn.State``) and ``eqx.nn.Dropout`` (whose rate, a Python float, must come back
  untouched: the ``eqx.is_inexact_array`` rule trains arrays only) through ``fit(state=...,
  rng=True)``.

Training runs full batch where dropout is checked, so that two seeds differ only in their dropout
keys (with mini-batches the seed also reorders the batches). A layer before a ``BatchNorm`` has no
bias: its gradient would be rounding noise, which Adam turns into steps. Each expensive program is
compiled by one test, or shared by two through a module fixture (``linen_fits``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import gdjax

N_TRAIN, N_TEST, HIDDEN = 256, 128, 8
STEPS = 12  # full-batch steps (epochs) of the dropout runs
LR = 1e-2
MOMENTUM = 0.8  # linen BatchNorm's running-average momentum: the statistics move fast


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    from gdjax.batch_study import load_digits_split

    train, test = load_digits_split(test_fraction=0.2)
    take = lambda d, n: {"x": jnp.asarray(d["x"][:n], jnp.float32), "y": jnp.asarray(d["y"][:n])}
    return take(train, N_TRAIN), take(test, N_TEST)


def xent(logits, y):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def accuracy(logits, y):
    return jnp.mean(jnp.argmax(logits, axis=-1) == y)


@jax.custom_vjp
def bad_tanh(x):
    """``tanh`` with a wrong backward rule (``1 - y`` for ``1 - y**2``): a model bug to catch."""
    return jnp.tanh(x)


bad_tanh.defvjp(lambda x: (jnp.tanh(x), jnp.tanh(x)), lambda y, g: ((1 - y) * g,))


def reference_top_eigenvalue(f, x):
    """The largest eigenvalue of the Hessian of ``f`` at ``x`` by SciPy's Lanczos (``eigsh``) on
    Hessian-vector products: an independent method, without forming the Hessian."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    flat, unravel = ravel_pytree(x)
    grad = jax.grad(lambda z: f(unravel(z)))
    hvp = jax.jit(lambda v: jax.jvp(grad, (flat,), (v,))[1])
    op = LinearOperator((flat.size, flat.size), dtype=np.float32,
                        matvec=lambda v: np.asarray(hvp(jnp.asarray(v, flat.dtype).ravel())))
    return float(eigsh(op, k=1, which="LA", tol=1e-6, return_eigenvectors=False)[0])


# --- flax linen: BatchNorm and Dropout ----------------------------------------------------------


@pytest.fixture(scope="module")
def linen(digits):
    pytest.importorskip("flax")
    import flax.linen as nn

    class MLP(nn.Module):
        act: object = jnp.tanh

        @nn.compact
        def __call__(self, x, train: bool):
            h = nn.Dense(HIDDEN, use_bias=False)(x)  # (a bias before BatchNorm has no gradient)
            h = nn.BatchNorm(use_running_average=not train, momentum=MOMENTUM)(h)
            h = nn.Dropout(0.3, deterministic=not train)(self.act(h))
            return nn.Dense(10)(h)

    train, test = digits
    model = MLP()
    variables = model.init(jax.random.key(0), train["x"][:2], train=False)
    params, stats = variables["params"], variables["batch_stats"]

    def loss(params, batch_stats, batch, *, key):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, batch["x"], train=True,
            rngs={"dropout": key}, mutable=["batch_stats"])
        return xent(logits, batch["y"]), updates["batch_stats"]

    def eval_loss(params, batch_stats, batch, model=model):
        logits = model.apply({"params": params, "batch_stats": batch_stats}, batch["x"],
                             train=False)
        return xent(logits, batch["y"])

    def hidden(params):
        """The BatchNorm's input on the whole training set (what its statistics average)."""
        return train["x"] @ params["Dense_0"]["kernel"]

    def metrics(params, batch_stats):
        logits = model.apply({"params": params, "batch_stats": batch_stats}, test["x"],
                             train=False)
        h, bn = hidden(params), batch_stats["BatchNorm_0"]
        return {"accuracy": accuracy(logits, test["y"]), "bn_mean": bn["mean"][0],
                "bn_var": bn["var"][0], "h_mean": h[:, 0].mean(), "h_var": h[:, 0].var(),
                "bn_mean_sum": bn["mean"].sum(), "h_mean_sum": h.mean(0).sum()}

    return {"nn": nn, "MLP": MLP, "model": model, "params": params, "stats": stats,
            "loss": loss, "eval_loss": eval_loss, "metrics": metrics}


@pytest.fixture(scope="module")
def linen_fits(linen, digits):
    """Full-batch Adam runs with ``state`` and ``rng``: seed 0 twice, seed 1 once (one compiled
    program), each recording ``linen["metrics"]`` at every step."""

    def run(seed):
        return gdjax.fit(linen["loss"], linen["params"], digits[0], state=linen["stats"],
                         rng=True, optimizer="adam", learning_rate=LR, epochs=STEPS, seed=seed,
                         record_every=1, eval_fn=linen["metrics"])

    return {"seed0": run(0), "seed0 again": run(0), "seed1": run(1)}


def test_linen_check_grads_on_its_params_and_catches_a_wrong_rule(linen, digits):
    from flax.core import freeze

    batch = jax.tree.map(lambda a: a[:32], digits[0])
    params = freeze(linen["params"])  # a FrozenDict, as older flax returns it
    stats = jax.tree.map(lambda a: a + 0.5, linen["stats"])  # statistics away from (0, 1)
    report = gdjax.check_grads(linen["eval_loss"], params, args=(stats, batch), modes=("rev",))
    assert report.ok, str(report)

    wrong = linen["MLP"](act=bad_tanh)
    report = gdjax.check_grads(lambda p, s, b: linen["eval_loss"](p, s, b, model=wrong), params,
                               args=(stats, batch), modes=("rev",))
    assert not report.ok
    assert any(layer in str(report.leaf) for layer in ("Dense_0", "BatchNorm_0")), str(report)


def test_linen_fit_threads_batch_stats_and_draws_dropout_from_the_seed(linen, linen_fits):
    res = linen_fits["seed0"]
    assert jax.tree.structure(res.state) == jax.tree.structure(linen["stats"])
    mean, var = res.state["BatchNorm_0"]["mean"], res.state["BatchNorm_0"]["var"]
    assert np.abs(np.asarray(mean)).max() > 0.1  # moved away from the init, mean 0 ...
    assert np.abs(np.asarray(var) - 1).max() > 0.1  # ... and variance 1
    # linen's recurrence, one update at a time: s[t+1] = m s[t] + (1 - m) stat(h(params[t])),
    # read from the history, which records eval_fn(params[t], state[t]) at every step
    m = res.history.metrics
    assert len(res.history.step) == STEPS + 1
    for stat, of_h in (("bn_mean", "h_mean"), ("bn_var", "h_var"), ("bn_mean_sum", "h_mean_sum")):
        want = MOMENTUM * m[stat][:-1] + (1 - MOMENTUM) * m[of_h][:-1]
        np.testing.assert_allclose(m[stat][1:], want, rtol=1e-4, atol=1e-5, err_msg=stat)
    np.testing.assert_allclose(m["bn_mean"][0], 0.0)
    np.testing.assert_allclose(m["bn_var"][0], 1.0)
    np.testing.assert_allclose(m["bn_mean"][-1], mean[0], rtol=1e-6)  # the last record: final
    assert m["accuracy"][-1] > m["accuracy"][0] + 0.2

    # dropout: the same seed gives the same run, bit for bit ...
    again = linen_fits["seed0 again"]
    for leaf0, leaf1 in zip(jax.tree.leaves((res.params, res.state)),
                            jax.tree.leaves((again.params, again.state)), strict=True):
        np.testing.assert_array_equal(leaf0, leaf1)
    np.testing.assert_array_equal(res.loss, again.loss)
    # ... and, full batch, another seed changes the dropout keys alone, and so the run
    other = linen_fits["seed1"]
    diffs = [np.abs(np.asarray(a) - np.asarray(b)).max()
             for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(other.params),
                             strict=True)]
    assert max(diffs) > 1e-3, diffs
    assert float(res.loss) != float(other.loss)


def test_linen_sweep_over_learning_rate_and_seed_repeats_fit_and_saves(linen, linen_fits, digits,
                                                                       tmp_path):
    from flax.core import FrozenDict, freeze, unfreeze

    res = gdjax.sweep(linen["loss"], freeze(linen["params"]), "adam", data=digits[0],
                      state=linen["stats"], rng=True, epochs=STEPS,
                      grid={"learning_rate": [LR, 3 * LR], "seed": [0, 1]},
                      eval_fn=lambda p, s: {"accuracy": linen["metrics"](p, s)["accuracy"]},
                      progress=False)
    assert len(res) == 4
    assert isinstance(res.params, FrozenDict)
    lead = {np.shape(leaf)[0] for leaf in jax.tree.leaves(res.state)}
    assert lead == {4}, lead
    assert jax.tree.structure(jax.tree.map(lambda a: a[0], res.state)) == jax.tree.structure(
        linen["stats"])
    for seed in (0, 1):  # each config as fit runs it alone (keys, batch statistics and all)
        (i,) = np.flatnonzero(np.isclose(res.grid["learning_rate"], LR)
                              & (np.asarray(res.grid["seed"]) == seed))
        alone = linen_fits[f"seed{seed}"]
        for got, want in zip(jax.tree.leaves((unfreeze(res.params), res.state)),
                             jax.tree.leaves((alone.params, alone.state)), strict=True):
            np.testing.assert_allclose(got[i], want, rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(res.history.metrics["accuracy"][i, -1],
                                   alone.history.metrics["accuracy"][-1], atol=1 / N_TEST)
    # the same learning rate, two seeds: different dropout, different parameters
    w = np.asarray(res.params["Dense_0"]["kernel"])
    lr = np.asarray(res.grid["learning_rate"])
    for rate in np.unique(lr):
        a, b = w[lr == rate]
        assert np.abs(a - b).max() > 1e-3
    assert np.all(np.asarray(res.history.metrics["accuracy"])[:, -1] > 0.5)

    # written and read back: the FrozenDict comes back as a dict, with a warning
    for suffix in (".json", ".npz"):
        path = tmp_path / f"sweep{suffix}"
        getattr(res, "to_" + suffix[1:])(path)
        with pytest.warns(UserWarning, match="FrozenDict"):
            back = gdjax.load(path)
        assert isinstance(back.params, dict)
        assert jax.tree.structure(back.params) == jax.tree.structure(unfreeze(res.params))
        for got, want in zip(jax.tree.leaves(back.params), jax.tree.leaves(unfreeze(res.params)),
                             strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want, err_msg=suffix)
        np.testing.assert_array_equal(back.loss, res.loss)
        assert list(back.grid) == list(res.grid)
    for got, want in zip(jax.tree.leaves(back.state), jax.tree.leaves(res.state), strict=True):
        np.testing.assert_array_equal(got, want)  # npz keeps the state too


def test_linen_hessian_top_eigenvalue_matches_lanczos(linen, digits):
    f = lambda p: linen["eval_loss"](p, linen["stats"], digits[0])
    top = gdjax.hessian_top_eigenvalue(f, linen["params"], num_iters=300)
    assert bool(top.converged)
    np.testing.assert_allclose(float(top.eigenvalue),
                               reference_top_eigenvalue(f, linen["params"]), rtol=2e-3)


# --- flax nnx: Dropout, split into graphdef / params / rest -------------------------------------


@pytest.fixture(scope="module")
def nnx_model(digits):
    pytest.importorskip("flax")
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(64, HIDDEN, rngs=rngs)
            self.dropout = nnx.Dropout(0.3, rngs=rngs)
            self.out = nnx.Linear(HIDDEN, 10, rngs=rngs)

        def __call__(self, x, key=None):
            h = jnp.tanh(self.hidden(x))
            return self.out(self.dropout(h, deterministic=key is None, rngs=key))

    graphdef, params, rest = nnx.split(MLP(nnx.Rngs(0)), nnx.Param, ...)
    assert jax.tree.leaves(rest)  # the dropout's own random stream: not trained

    def loss(params, batch, *, key=None):
        model = nnx.merge(graphdef, params, rest)
        return xent(model(batch["x"], key), batch["y"])

    def test_accuracy(params):
        model = nnx.merge(graphdef, params, rest)
        return accuracy(model(digits[1]["x"]), digits[1]["y"])

    return {"nnx": nnx, "params": params, "loss": loss, "graphdef": graphdef, "rest": rest,
            "test_accuracy": test_accuracy}


def test_nnx_fit_with_dropout_trains_the_params_state(nnx_model, digits):
    nnx = nnx_model["nnx"]
    res, other = (gdjax.fit(nnx_model["loss"], nnx_model["params"], digits[0], rng=True,
                            optimizer="adam", learning_rate=LR, epochs=STEPS, seed=seed,
                            eval_fn=nnx_model["test_accuracy"]) for seed in (0, 1))
    assert isinstance(res.params, nnx.State)
    assert jax.tree.structure(res.params) == jax.tree.structure(nnx_model["params"])
    acc = np.asarray(res.history.metrics)
    assert acc[-1] > acc[0] + 0.2
    model = nnx.merge(nnx_model["graphdef"], res.params, nnx_model["rest"])
    trained = float(xent(model(digits[0]["x"]), digits[0]["y"]))
    assert trained < float(nnx_model["loss"](nnx_model["params"], digits[0])) - 0.2
    # full batch: the seeds differ only in the dropout keys handed to the loss
    diffs = [np.abs(np.asarray(a) - np.asarray(b)).max()
             for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(other.params),
                             strict=True)]
    assert max(diffs) > 1e-3, diffs


def test_nnx_check_grads_on_the_state(nnx_model, digits):
    batch = jax.tree.map(lambda a: a[:32], digits[0])
    report = gdjax.check_grads(nnx_model["loss"], nnx_model["params"], args=(batch,),
                               modes=("rev",))
    assert report.ok, str(report)
    assert report.n_checked == ravel_pytree(nnx_model["params"])[0].size


# --- equinox: a module as it is, and BatchNorm with eqx.nn.State --------------------------------


@pytest.fixture(scope="module")
def eqx_mlp(digits):
    eqx = pytest.importorskip("equinox")
    mlp = eqx.nn.MLP(64, 10, HIDDEN, depth=1, activation=jnp.tanh, key=jax.random.key(0))

    def loss(model, batch):
        return xent(jax.vmap(model)(batch["x"]), batch["y"])

    return {"eqx": eqx, "mlp": mlp, "loss": loss}


def test_eqx_mlp_check_grads_as_it_is(eqx_mlp, digits):
    batch = jax.tree.map(lambda a: a[:32], digits[0])
    report = gdjax.check_grads(eqx_mlp["loss"], eqx_mlp["mlp"], args=(batch,), modes=("rev",))
    assert report.ok, str(report)
    eqx = eqx_mlp["eqx"]
    assert report.n_checked == ravel_pytree(eqx.filter(eqx_mlp["mlp"], eqx.is_inexact_array))[
        0].size


def test_eqx_mlp_fit_returns_the_module(eqx_mlp, digits):
    eqx, mlp = eqx_mlp["eqx"], eqx_mlp["mlp"]
    res = gdjax.fit(eqx_mlp["loss"], mlp, digits[0], optimizer="adam", learning_rate=LR,
                    batch_size=64, epochs=3)
    assert isinstance(res.params, eqx.nn.MLP)
    assert res.params.activation is jnp.tanh and res.params.depth == 1
    assert jax.tree.structure(res.params) == jax.tree.structure(mlp)
    assert float(res.loss) < float(eqx_mlp["loss"](mlp, digits[0])) - 0.3
    np.testing.assert_allclose(float(res.loss), float(eqx_mlp["loss"](res.params, digits[0])),
                               rtol=1e-5)
    logits = jax.vmap(res.params)(digits[1]["x"])
    assert float(accuracy(logits, digits[1]["y"])) > 0.5


def test_eqx_mlp_hessian_top_eigenvalue(eqx_mlp, digits):
    eqx, mlp = eqx_mlp["eqx"], eqx_mlp["mlp"]
    f = lambda m: eqx_mlp["loss"](m, digits[0])
    top = gdjax.hessian_top_eigenvalue(f, mlp, num_iters=300)
    assert bool(top.converged)
    arrays, static = eqx.partition(mlp, eqx.is_inexact_array)
    want = reference_top_eigenvalue(lambda a: f(eqx.combine(a, static)), arrays)
    np.testing.assert_allclose(float(top.eigenvalue), want, rtol=2e-3)


def test_eqx_mlp_sweep_gives_each_config_back_as_a_module(eqx_mlp, digits):
    eqx, mlp = eqx_mlp["eqx"], eqx_mlp["mlp"]
    batch = jax.tree.map(lambda a: a[:64], digits[0])
    res = gdjax.sweep(lambda m: eqx_mlp["loss"](m, batch), mlp, "sgd",
                      grid={"learning_rate": [0.1, 0.3]}, steps=5, progress=False)
    assert isinstance(res.params, eqx.nn.MLP) and res.params.activation is jnp.tanh
    assert res.params.layers[0].weight.shape == (2, HIDDEN, 64)  # a leading config axis
    for one in (res.result(1).params, res.best().params):
        assert isinstance(one, eqx.nn.MLP) and one.activation is jnp.tanh
    np.testing.assert_array_equal(res.result(1).params.layers[0].weight,
                                  res.params.layers[0].weight[1])


def test_eqx_batchnorm_and_dropout_through_fit(digits):
    """An equinox model with ``eqx.nn.BatchNorm`` (its ``eqx.nn.State``) and ``eqx.nn.Dropout``
    through ``fit(state=..., rng=True)``: the state moves once per update and comes back; the
    dropout rate, a Python float field, is carried, not trained (even under weight decay)."""
    eqx = pytest.importorskip("equinox")

    class Net(eqx.Module):
        hidden: eqx.nn.Linear
        norm: eqx.nn.BatchNorm
        dropout: eqx.nn.Dropout
        out: eqx.nn.Linear

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.hidden = eqx.nn.Linear(64, HIDDEN, use_bias=False, key=k1)
            self.norm = eqx.nn.BatchNorm(HIDDEN, "batch", momentum=0.5, mode="batch")
            self.dropout = eqx.nn.Dropout(0.3)
            self.out = eqx.nn.Linear(HIDDEN, 10, key=k2)

        def __call__(self, x, state, key=None):
            h, state = self.norm(self.hidden(x), state)
            h = self.dropout(jnp.tanh(h), key=key, inference=key is None)
            return self.out(h), state

    model, state0 = eqx.nn.make_with_state(Net)(jax.random.key(0))

    def loss(model, state, batch, *, key):
        keys = jax.random.split(key, len(batch["y"]))
        logits, state = jax.vmap(model, axis_name="batch", in_axes=(0, None, 0),
                                 out_axes=(0, None))(batch["x"], state, keys)
        return xent(logits, batch["y"]), state

    train, test = digits
    res = gdjax.fit(loss, model, train, state=state0, rng=True, optimizer="adamw",
                    learning_rate=LR, weight_decay=0.5, batch_size=64, epochs=2)
    steps = 2 * (N_TRAIN // 64)
    assert res.steps == steps
    assert isinstance(res.params, Net) and isinstance(res.state, eqx.nn.State)
    assert type(res.params.dropout.p) is float and res.params.dropout.p == 0.3
    assert res.params.dropout.inference is False
    assert int(res.state.get(res.params.norm.batch_counter)) == steps  # one move per update
    mean, var = res.state.get(res.params.norm.batch_state_index)
    mean0, var0 = state0.get(model.norm.batch_state_index)
    assert np.abs(np.asarray(mean - mean0)).max() > 0.1
    assert np.abs(np.asarray(var - var0)).max() > 0.1
    infer = eqx.nn.inference_mode(res.params)
    logits, _ = jax.vmap(infer, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
        test["x"], res.state)
    assert float(accuracy(logits, test["y"])) > 0.5
