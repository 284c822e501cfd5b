"""Stochastic, mini-batch and batch gradient descent on an in-memory data set: :func:`fit`.

The seed's three variants differ only in how many samples feed each gradient:

* ``batch_size=1``: stochastic GD, one sample per step;
* ``1 < batch_size < N``: mini-batch GD, the mean loss over ``batch_size`` samples;
* ``batch_size=None`` (or ``N``): batch GD, the mean over the whole data set.

Each epoch visits the samples in a fresh random order drawn from ``seed`` (the ``e``-th
permutation of ``np.random.default_rng(seed)``, see :func:`epoch_orders`). The data set stays on
the device and every epoch runs inside one compiled program: the batch indices of all steps are
drawn up front on the host (``epochs x N`` int32, the size of one index per sample visited) and
the engine's scanned loop gathers each step's batch from them.

**Remainder batch.** With ``N % batch_size = r > 0`` the last ``r`` samples of each epoch's
permutation are left out of that epoch (``drop_last`` in PyTorch's terms), so every step sees a
batch of exactly ``batch_size`` and shapes stay static; since the order is redrawn every epoch, a
different ``r`` samples sit out each time. A full batch (``batch_size = N``) uses the data in its
given order, so it equals :func:`gdjax.minimize` on the mean loss exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gdjax import descent, engine, inputs, optimizers
from gdjax.descent import concrete
from gdjax.engine import Result

PyTree = Any


def sample_count(data: PyTree) -> int:
    """The shared leading size of every leaf of ``data``, or ``ValueError``."""
    leaves = jax.tree_util.tree_flatten_with_path(data)[0]
    if not leaves:
        raise ValueError(f"data must contain at least one array, got data={data!r}")
    sizes = {jax.tree_util.keystr(p) or "data": (jnp.shape(x) or (None,))[0] for p, x in leaves}
    if None in sizes.values():
        raise ValueError(f"every leaf of data needs a leading sample axis; got shapes {sizes}")
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"every leaf of data must have the same leading (sample) size, got sizes {sizes}"
        )
    n = next(iter(sizes.values()))
    if n < 1:
        raise ValueError("data must hold at least one sample, got 0")
    return int(n)


def epoch_orders(seed: int, n: int, epochs: int) -> np.ndarray:
    """The sample order of every epoch: int32 ``(epochs, n)``, each row a permutation of ``n``.

    Epoch ``e`` takes the ``e``-th permutation drawn from ``np.random.default_rng(seed)`` (a
    negative seed is read as its 64-bit two's complement). Drawn on the host, as PyTorch's
    ``DataLoader`` does: ``jax.random.permutation`` sorts, and XLA:CPU's sort took 4 ms for five
    epochs of 1797 samples, a third of a whole ``fit`` on the digits; NumPy takes ~0.1 ms.
    """
    rng = np.random.default_rng(int(seed) & (2**64 - 1))
    return np.stack([rng.permutation(n) for _ in range(epochs)]).astype(np.int32)


def batch_schedule(seed: int, n: int, batch_size: int, epochs: int) -> np.ndarray:
    """Indices of every step's batch: int32 ``(epochs * (n // batch_size), batch_size)``.

    Epoch ``e`` visits :func:`epoch_orders` ``(seed, n, epochs)[e]``, its last
    ``n % batch_size`` samples left out.
    """
    per_epoch = n // batch_size
    orders = epoch_orders(seed, n, epochs)
    return orders[:, : per_epoch * batch_size].reshape(epochs * per_epoch, batch_size)


class Objective(NamedTuple):
    """A user's ``loss_fn`` under one calling convention: ``objective(params, state, batch, key,
    *args) -> (loss, (new_state, aux))``.

    The conventions it reads (``state``, ``key`` and ``aux`` are ``None`` where unused):

    * plain: ``loss_fn(params, batch, *args) -> loss``;
    * ``stateful`` (``fit(state=...)``): ``loss_fn(params, state, batch, *args) -> (loss,
      new_state)``, the state threaded but not trained (batch statistics);
    * ``rng`` (``fit(rng=True)``): ``loss_fn(..., key=key)``, a PRNG key new at every step;
    * ``has_aux``: the loss comes as ``(loss, aux)``; with a state, ``(loss, (new_state, aux))``.
    """

    loss_fn: Callable[..., Any]
    has_aux: bool = False
    stateful: bool = False
    rng: bool = False

    def __call__(self, params, state, batch, key, *args):
        head = (params, state, batch) if self.stateful else (params, batch)
        out = self.loss_fn(*head, *args, **({"key": key} if self.rng else {}))
        if self.stateful:
            loss, rest = out
            new_state, aux = rest if self.has_aux else (rest, None)
        elif self.has_aux:
            (loss, aux), new_state = out, None
        else:
            loss, new_state, aux = out, None, None
        return loss, (new_state, aux)


def step_key(seed: jax.Array | None, t: jax.Array) -> jax.Array | None:
    """Step ``t``'s PRNG key of a run seeded ``seed`` (a uint32): ``fold_in(key(seed), t)``."""
    if seed is None:
        return None
    return jax.random.fold_in(jax.random.key(seed), t)


def run_seed(seed: Any) -> np.ndarray:
    """A run's ``seed`` as the uint32 its keys start from (a negative seed wraps)."""
    if np.ndim(seed) == 0:  # a Python int of any size, as epoch_orders reads it
        return np.uint32(int(seed) & 0xFFFFFFFF)
    return (np.asarray(seed, np.int64) & 0xFFFFFFFF).astype(np.uint32)


def batch_source(objective: Objective) -> engine.ValueAndGrad:
    """The engine's gradient source for ``objective`` (an :class:`Objective`).

    ``aux`` is ``(data, indices, args, seed)``: step ``t`` uses rows ``indices[t]`` (wrapping at
    the end; ``indices=None`` means the whole data set every step) and, with ``rng``, the key
    :func:`step_key` ``(seed, t)``. A stateful objective's source is ``(params, t, aux, state)
    -> (loss, grads, new_state)``, a plain one's ``(params, t, aux) -> (loss, grads)``.
    """
    value_and_grad = jax.value_and_grad(lambda *a: objective(*a), has_aux=True)

    def source(params, t, aux, state=None):
        (loss, (new_state, _)), grad = value_and_grad(
            params, state, batch_at(aux, t), step_key(aux[3], t), *aux[2])
        return (loss, grad, new_state) if objective.stateful else (loss, grad)

    return source


def batch_value(objective: Objective) -> Callable:
    """The loss alone, ``(params, t, aux[, state]) -> loss``, on :func:`batch_source`'s
    batches."""
    return lambda params, t, aux, state=None: objective(
        params, state, batch_at(aux, t), step_key(aux[3], t), *aux[2])[0]


def batch_at(aux: tuple, t: jax.Array) -> PyTree:
    """Step ``t``'s batch of ``aux = (data, indices, args, seed)``."""
    data, indices = aux[:2]
    if indices is None:
        return data
    rows = indices[t % indices.shape[0]]
    return jax.tree.map(lambda a: a[rows], data)


def fit(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    data: PyTree,
    *,
    optimizer: str | optax.GradientTransformation = "sgd",
    learning_rate: Any = None,
    batch_size: int | None = None,
    epochs: int = 1,
    seed: int = 0,
    eval_fn: Callable[[PyTree], Any] | None = None,
    record_every: int | None = None,
    tol: Any = None,
    args: Any = (),
    has_aux: bool = False,
    divergence: float | None = engine.DIVERGENCE_FACTOR,
    state: PyTree = None,
    rng: bool = False,
    **hyperparameters: Any,
) -> Result:
    """Train ``params`` on ``data`` by stochastic, mini-batch or batch gradient descent.

    Like :func:`gdjax.minimize`, a pure function of its array arguments (``params``, ``data``,
    ``learning_rate`` and the other numeric hyperparameters, ``tol``): it runs eagerly and
    composes with ``jax.jit``, ``jax.vmap`` and ``jax.grad`` (see there for what differentiating
    through the loop costs). ``seed`` is a Python int: the sample orders are drawn on the host
    (to vary it inside one program, sweep it: ``gdjax.sweep(grid={"seed": ...})``).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss over ``batch``, which has the
        structure of ``data`` with a leading batch axis.
      params: the start, a pytree of float arrays.
      data: a pytree of arrays sharing a leading sample axis of size ``N``.
      optimizer: a name from :data:`gdjax.OPTIMIZERS` or any optax transformation.
      learning_rate: a number or optax schedule (per step); the optimiser's default when ``None``.
      batch_size: ``1`` stochastic, ``None`` or ``N`` full batch, in between mini-batch.
      epochs: passes over the data; there are ``N // batch_size`` steps per epoch.
      seed: seeds the per-epoch sample order.
      eval_fn: ``params -> scalar or dict of scalars`` (e.g. test accuracy), recorded in
        ``history.metrics`` at every record.
      record_every: history every this many steps; once per epoch when ``None``.
      tol: converged once the (mini-batch) gradient norm is ``<= tol``.
      args: extra arguments: ``loss_fn(params, batch, *args)`` (arrays, traced).
      has_aux: ``loss_fn`` returns ``(loss, aux)``; ``result.aux`` is the ``aux`` over the whole
        data set at the final parameters.
      divergence: diverged once the mini-batch loss is non-finite or passes
        ``f0 + divergence * max(|f0|, 1)``, ``f0`` the first batch's loss (see
        :func:`gdjax.minimize`); ``None``: only a non-finite loss.
      state: a pytree of arrays threaded through the steps but not trained (flax's mutable
        collections such as ``batch_stats``, ``eqx.nn.State``). With it ``loss_fn(params,
        state, batch, *args) -> (loss, new_state)`` (with ``has_aux``: ``(loss, (new_state,
        aux))``) and ``eval_fn(params, state)``. Each update's forward pass moves the state
        once, as a hand-written loop does; records and the final loss read it without moving
        it. ``result.state`` is the final state.
      rng: call ``loss_fn(..., key=key)`` with a PRNG key new at every step (for dropout):
        ``jax.random.fold_in(jax.random.key(seed), t)`` at step ``t`` (``t`` from 0; the final
        whole-data loss uses ``t = steps``), so the same ``seed`` reproduces a run and a
        sweep over ``seed`` varies the keys too.
      **hyperparameters: other hyperparameters of the optimiser.

    Returns:
      A :class:`gdjax.Result` whose ``loss`` is the mean loss over the whole data set at the final
      parameters and whose ``history.loss`` holds the mini-batch loss at each record.

    Parameters that are not all arrays (an equinox module, a pytree with ``None``, ints or
    functions among its leaves) are trained on their floating-point arrays; the other leaves are
    carried unchanged, and ``result.params`` has the structure of ``params``.

    Raises:
      ValueError, TypeError: bad arguments, named with their value.

    Example:
      >>> import gdjax, jax.numpy as jnp
      >>> X = jnp.linspace(-1, 1, 64)[:, None]; y = 3 * X[:, 0] + 1
      >>> loss = lambda p, b: jnp.mean((b[0] @ p["w"] + p["b"] - b[1]) ** 2)
      >>> res = gdjax.fit(loss, {"w": jnp.zeros(1), "b": jnp.zeros(())}, (X, y),
      ...                 optimizer="sgd", learning_rate=0.2, batch_size=8, epochs=30)
      >>> round(float(res.params["w"][0]), 3), round(float(res.params["b"]), 3)
      (3.0, 1.0)
    """
    n = sample_count(data)
    epochs = inputs.positive_int("epochs", epochs)
    if batch_size is None:
        batch_size = n
    batch_size = inputs.positive_int("batch_size", batch_size)
    if batch_size > n:
        raise ValueError(
            f"batch_size must be at most the number of samples ({n}), got batch_size={batch_size}"
        )
    steps = epochs * (n // batch_size)
    record_every = inputs.positive_int(
        "record_every", n // batch_size if record_every is None else record_every
    )
    tol = inputs.optional_tolerance("tol", tol)
    divergence = inputs.optional_tolerance("divergence", divergence)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(
            f"seed must be a Python int (it orders the batches on the host), got seed={seed!r}; "
            "to run several seeds in one program, use gdjax.sweep(grid={'seed': ...})"
        )
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable or None, got eval_fn={eval_fn!r}")
    rng = inputs.flag("rng", rng)
    has_aux = inputs.flag("has_aux", has_aux)
    if learning_rate is not None:
        hyperparameters["learning_rate"] = learning_rate

    with inputs.precision(params):
        params, rebuild = inputs.trainable("params", params)
        loss_fn = inputs.bind(loss_fn, rebuild)
        eval_fn = None if eval_fn is None else inputs.bind(eval_fn, rebuild)
        state = model_state(state)
        data = jax.tree.map(jnp.asarray, data)
        first = jax.tree.map(lambda a: a[:batch_size], data)
        args = descent.extra_args(args)
        objective = Objective(loss_fn, has_aux, state is not None, rng)
        check_objective("loss_fn", objective, params, state, first, args)
        tx, numbers = optimizers.prepare(optimizer, hyperparameters, params)
        indices = None
        if batch_size < n:
            indices = batch_schedule(seed, n, batch_size, epochs)
        key_seed = run_seed(seed) if rng else None
        result = _fit(params, numbers, (data, indices, args, key_seed), tol, divergence,
                      state, inputs.static(loss_fn), tx, inputs.static(eval_fn), steps,
                      record_every, objective._replace(loss_fn=None))
    return concrete(descent.rebuilt(result, rebuild))


def model_state(state: PyTree) -> PyTree:
    """``state`` (``fit(state=...)``) as a pytree of jax arrays, or ``None``."""
    if state is None:
        return None
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    if not leaves:
        raise ValueError(f"state must hold at least one array, got state={state!r}")
    for path, leaf in leaves:
        if not isinstance(leaf, jax.Array | np.ndarray | np.generic | int | float | bool):
            raise TypeError(
                f"state must be a pytree of arrays; leaf {jax.tree_util.keystr(path) or 'state'}"
                f" is a {type(leaf).__name__}: {leaf!r}")
    return jax.tree.map(jnp.asarray, state)


def check_objective(name: str, objective: Objective, params: PyTree, state: PyTree,
                    batch: PyTree, args: tuple) -> np.dtype:
    """Check ``objective``'s loss function on one batch, abstractly (cached per function and
    shapes, as :func:`gdjax.inputs.abstract`): a scalar loss, and with a state a new state of
    the same structure, shapes and dtypes. Returns the loss's dtype."""
    loss_fn = objective.loss_fn
    if not (objective.stateful or objective.rng):
        return descent.check_objective(name, loss_fn, objective.has_aux, params, batch,
                                       *args).dtype
    if not callable(loss_fn):
        raise TypeError(f"{name} must be callable, got {name}={loss_fn!r}")
    key = step_key(jnp.uint32(0), jnp.int32(0)) if objective.rng else None
    call = ("(params, state, batch" if objective.stateful else "(params, batch") + (
        ", *args" if args else "") + (", key=key)" if objective.rng else ")")
    try:
        out = inputs.abstract(objective, params, state, batch, key, *args)
    except TypeError as e:
        raise TypeError(f"{name} must be callable as {name}{call}: {e}") from None
    except ValueError as e:  # unpacking a result of the wrong shape
        wanted = "(loss, new_state)" if not objective.has_aux else "(loss, (new_state, aux))"
        raise TypeError(f"{name}{call} must return {wanted if objective.stateful else 'a loss'}"
                        f": {e}") from None
    loss, (new_state, _) = out
    if not isinstance(loss, jax.ShapeDtypeStruct) or loss.shape != () or not jnp.issubdtype(
            loss.dtype, jnp.floating):
        raise TypeError(f"{name}{call} must return a floating-point scalar loss first, got "
                        f"{loss!r}")
    if objective.stateful:  # (compared as flat lists: a node such as eqx.nn.State may
        # compare by identity)
        leaves, treedef = jax.tree.flatten(state)
        new_leaves, new_treedef = jax.tree.flatten(new_state)
        want = [(a.shape, a.dtype) for a in leaves]
        got = [(np.shape(a), getattr(a, "dtype", None)) for a in new_leaves]
        if treedef != new_treedef or want != got:
            raise TypeError(
                f"{name}{call} must return (loss, new_state) with new_state shaped like state "
                f"(structure, shapes and dtypes): state {want}, new_state {got}")
    return loss.dtype


@functools.partial(engine.jit, static_argnums=(6, 7, 8, 9, 10, 11))
def _fit(params, numbers, aux, tol, divergence, state, loss_fn, tx, eval_fn, steps,
         record_every, objective):
    objective = objective._replace(loss_fn=loss_fn.value)
    run = engine.run(
        batch_source(objective), tx, params, steps=steps, aux=aux,
        opt_state=optimizers.init_state(tx, params, numbers), record_every=record_every,
        gtol=tol, divergence=divergence, value=batch_value(objective),
        record_fn=eval_fn.value, state=state, stateful=objective.stateful,
    )
    data, _, args, seed = aux
    loss, (_, out) = objective(run.params, run.state, data, step_key(seed, jnp.int32(steps)),
                               *args)
    return run._replace(loss=loss, aux=out if objective.has_aux else None)
