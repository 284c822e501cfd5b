"""gdjax.fit on flax and equinox models beside each library's own training loop.

One epoch of scikit-learn's digits (1797 samples, batch 32: 56 steps), Adam at 1e-3, a 64-32-10
MLP written in each library, trained by ``gdjax.fit`` and by the loop its documentation teaches:
a jitted optax step called from a Python ``for`` loop over the batches (the batches gathered on
the host from a NumPy permutation per epoch, as a NumPy or ``tf.data`` loader hands them over):

* flax linen with ``BatchNorm`` and ``Dropout``: ``fit(state=batch_stats, rng=True)`` against a
  ``train_step`` under ``jax.jit`` that threads ``batch_stats`` and folds the step into the
  dropout key;
* flax nnx with ``Dropout``: ``fit(rng=True)`` on ``nnx.split(model, nnx.Param, ...)``'s
  parameters with a loss that merges, against ``nnx.Optimizer`` and a step under ``nnx.jit``;
* equinox: the ``eqx.nn.MLP`` passed to ``fit`` as it is, against a step under
  ``eqx.filter_jit``. Both sides visit the batches in the same order here (gdjax's
  :func:`~gdjax.batching.batch_schedule`), so their final losses are compared.

Each timing is the whole call (gdjax's argument checks and its batch schedule included) after a
first call that compiles; the peers' first calls are given in the notes. Libraries that are not
installed are skipped.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gdjax
from benchmarks.harness import Row, best_time, block, first_call_time
from gdjax.batching import batch_schedule

BATCH, HIDDEN, LR, DROPOUT = 32, 32, 1e-3, 0.1


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int32)


def _xent(logits, y):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def _order(n: int, epochs: int = 1) -> np.ndarray:
    """The batches' rows, ``(steps, BATCH)``: the order gdjax.fit uses for seed 0."""
    return batch_schedule(0, n, BATCH, epochs)


def _time(gd, peer, repeat: int) -> tuple[float, float, float, float]:
    """First calls, then the best of interleaved rounds (this machine's speed drifts)."""
    gd_first, peer_first = first_call_time(gd), first_call_time(peer)
    t_gd = t_peer = float("inf")
    for _ in range(3):
        t_gd = min(t_gd, best_time(gd, repeat=repeat))
        t_peer = min(t_peer, best_time(peer, repeat=repeat))
    return t_gd, t_peer, gd_first, peer_first


def _linen_row(x, y, repeat: int) -> Row:
    import flax
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            h = nn.Dense(HIDDEN, use_bias=False)(x)
            h = nn.BatchNorm(use_running_average=not train)(h)
            h = nn.Dropout(DROPOUT, deterministic=not train)(jnp.tanh(h))
            return nn.Dense(10)(h)

    model = MLP()
    variables = model.init(jax.random.key(0), x[:2], train=False)
    params, stats = variables["params"], variables["batch_stats"]
    data = {"x": jnp.asarray(x), "y": jnp.asarray(y)}

    def loss(params, batch_stats, batch, *, key):
        logits, updates = model.apply({"params": params, "batch_stats": batch_stats},
                                      batch["x"], train=True, rngs={"dropout": key},
                                      mutable=["batch_stats"])
        return _xent(logits, batch["y"]), updates["batch_stats"]

    gd = lambda: block(gdjax.fit(loss, params, data, state=stats, rng=True, optimizer="adam",
                                 learning_rate=LR, batch_size=BATCH, epochs=1).params)

    tx = optax.adam(LR)

    @jax.jit
    def train_step(params, batch_stats, opt_state, xb, yb, key, step):
        def loss_fn(p):
            logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, xb,
                                          train=True, rngs={"dropout": jax.random.fold_in(key,
                                                                                          step)},
                                          mutable=["batch_stats"])
            return _xent(logits, yb), updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    def peer():
        p, s, o, key = params, stats, tx.init(params), jax.random.key(0)
        order = np.random.default_rng(0).permutation(len(x))
        for i in range(len(x) // BATCH):
            rows = order[i * BATCH:(i + 1) * BATCH]
            p, s, o, _ = train_step(p, s, o, x[rows], y[rows], key, i)
        return block(p)

    t_gd, t_peer, gd_first, peer_first = _time(gd, peer, repeat)
    return Row("fit", f"flax linen MLP + BatchNorm + Dropout, digits, batch {BATCH}, adam, "
               f"1 epoch ({len(x) // BATCH} steps)", t_gd,
               f"linen jit train_step loop (flax {flax.__version__})", t_peer,
               f"fit(state=batch_stats, rng=True); first calls (compile) gdjax {gd_first:.2f} s, "
               f"peer {peer_first:.2f} s")


def _nnx_row(x, y, repeat: int) -> Row:
    import flax
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(64, HIDDEN, rngs=rngs)
            self.dropout = nnx.Dropout(DROPOUT, rngs=rngs)
            self.out = nnx.Linear(HIDDEN, 10, rngs=rngs)

        def __call__(self, x, key=None):
            h = self.dropout(jnp.tanh(self.hidden(x)), rngs=key)
            return self.out(h)

    graphdef, params, rest = nnx.split(MLP(nnx.Rngs(0)), nnx.Param, ...)
    data = {"x": jnp.asarray(x), "y": jnp.asarray(y)}

    def loss(params, batch, *, key):
        return _xent(nnx.merge(graphdef, params, rest)(batch["x"], key), batch["y"])

    gd = lambda: block(gdjax.fit(loss, params, data, rng=True, optimizer="adam",
                                 learning_rate=LR, batch_size=BATCH, epochs=1).params)

    @nnx.jit
    def train_step(model, optimizer, xb, yb):
        def loss_fn(model):
            return _xent(model(xb), yb)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    # Made once: under nnx.jit a new model and optimizer are traced and compiled again (about
    # 2 s here), so each timed call trains one more epoch of the same model, as a loop over
    # epochs does. Its dropout draws from the model's own stream.
    model = nnx.merge(graphdef, params, rest)
    optimizer = nnx.Optimizer(model, optax.adam(LR), wrt=nnx.Param)

    def peer():
        order = np.random.default_rng(0).permutation(len(x))
        for i in range(len(x) // BATCH):
            rows = order[i * BATCH:(i + 1) * BATCH]
            train_step(model, optimizer, x[rows], y[rows])
        return block(nnx.state(model, nnx.Param))

    t_gd, t_peer, gd_first, peer_first = _time(gd, peer, repeat)
    return Row("fit", f"flax nnx MLP + Dropout, digits, batch {BATCH}, adam, 1 epoch "
               f"({len(x) // BATCH} steps)", t_gd,
               f"nnx.jit step + nnx.Optimizer loop (flax {flax.__version__})", t_peer,
               f"fit(rng=True) on the nnx.Param state; the peer's model and optimizer made once "
               f"(a new one recompiles); first calls (compile) gdjax {gd_first:.2f} s, peer "
               f"{peer_first:.2f} s")


def _equinox_row(x, y, repeat: int) -> Row:
    import equinox as eqx

    mlp = eqx.nn.MLP(64, 10, HIDDEN, depth=1, activation=jnp.tanh, key=jax.random.key(0))
    data = {"x": jnp.asarray(x), "y": jnp.asarray(y)}

    def loss(model, batch):
        return _xent(jax.vmap(model)(batch["x"]), batch["y"])

    gd = lambda: block(eqx.filter(gdjax.fit(loss, mlp, data, optimizer="adam",
                                            learning_rate=LR, batch_size=BATCH,
                                            epochs=1).params, eqx.is_inexact_array))

    tx = optax.adam(LR)

    @eqx.filter_jit
    def step(model, opt_state, xb, yb):
        value, grads = eqx.filter_value_and_grad(
            lambda m: loss(m, {"x": xb, "y": yb}))(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, value

    order = _order(len(x))  # the batches gdjax.fit visits, so the results compare

    def train():
        model, opt_state = mlp, tx.init(eqx.filter(mlp, eqx.is_inexact_array))
        for rows in order:
            model, opt_state, _ = step(model, opt_state, x[rows], y[rows])
        return model

    peer = lambda: block(eqx.filter(train(), eqx.is_inexact_array))
    t_gd, t_peer, gd_first, peer_first = _time(gd, peer, repeat)
    ours = gdjax.fit(loss, mlp, data, optimizer="adam", learning_rate=LR, batch_size=BATCH,
                     epochs=1)
    np.testing.assert_allclose(float(ours.loss), float(loss(train(), data)), rtol=1e-4)
    return Row("fit", f"equinox eqx.nn.MLP, digits, batch {BATCH}, adam, 1 epoch "
               f"({len(order)} steps)", t_gd,
               f"eqx.filter_jit step loop (equinox {eqx.__version__})", t_peer,
               f"the module passed as it is; same batches, same final loss; first calls "
               f"(compile) gdjax {gd_first:.2f} s, peer {peer_first:.2f} s")


def run(quick: bool = False) -> list[Row]:
    x, y = _digits()
    repeat = 3 if quick else 10
    rows = []
    for module, make in (("flax", _linen_row), ("flax", _nnx_row), ("equinox", _equinox_row)):
        try:
            __import__(module)
        except ImportError:
            continue
        rows.append(make(x, y, repeat))
    return rows


if __name__ == "__main__":
    t0 = time.perf_counter()
    for row in run(quick="--quick" in sys.argv):
        print(f"{row.case:75s} gdjax {row.gdjax_s * 1e3:8.2f} ms  {row.peer:45s} "
              f"{row.peer_s * 1e3:8.2f} ms x{row.speedup:6.2f}  {row.note}")
    print(f"total {time.perf_counter() - t0:.1f} s")
