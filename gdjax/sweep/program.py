"""The compiled program of a sweep: ``vmap`` of the engine's run over a chunk of configs.

One program runs a chunk (its config axis sharded over a 1-D mesh named ``sweep``, each device
running ``vmap`` over its share) in three phases, each the engine's own code under ``vmap``:

1. every config's run, segment by segment (:meth:`gdjax.engine.Loop.scan`);
2. the replays of the configs that diverged, gathered into small batches so that a replay
   costs what its configs need, not the whole chunk (the one place a sweep does more than
   ``vmap``: :meth:`gdjax.engine.Loop.replay` replays a whole batch);
3. every config's final state and settled history (:meth:`gdjax.engine.Loop.finish`).

Every numeric hyperparameter lives in the optimiser state (``optax.inject_hyperparams``) and
reaches the program as an array, so new grid values never recompile.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gdjax import batching, descent, engine, inputs, optimizers

PyTree = Any

AXIS = "sweep"
"""The name of the mesh axis the configs are sharded over."""


class Static(NamedTuple):
    """What one compiled program is specialised on (hashable: a jit static argument)."""

    f: inputs.static
    tx: optax.GradientTransformation
    grad: str
    steps: int
    record_every: int
    record_params: bool
    eval_fn: inputs.static
    n: int  # samples in the data set; 0 for minimize-style
    batch_size: int
    epochs: int
    mesh: jax.sharding.Mesh


def setup(one: PyTree, shared: PyTree, static: Static) -> tuple[engine.Loop, PyTree, PyTree]:
    """One config's loop, start and optimiser state: exactly what ``minimize`` (or ``fit``)
    runs, with its values as arrays."""
    x0 = one.get("x0", shared["x0"])
    opt_state = optimizers.init_state(static.tx, x0, {**shared["hyper"], **one["hyper"]})
    f = static.f.value
    if static.n:
        indices = None
        if static.batch_size < static.n:
            # batch_schedule's rows, cut from the config seed's per-epoch sample orders
            orders = shared["orders"][one.get("seed_index", shared["seed_index"])]
            per_epoch = static.n // static.batch_size
            indices = orders[:, : per_epoch * static.batch_size].reshape(-1, static.batch_size)
        source, aux = batching.batch_source(f), (shared["data"], indices)
    else:
        source, aux = descent.gradient_source(f, static.grad), None
    problem = engine.problem(source, static.tx, x0, aux, shared["tol"], shared["ftol"])
    loop = engine.Loop(problem, static.steps, static.record_every, static.record_params,
                       static.eval_fn.value)
    return loop, x0, opt_state


def run_configs(varying: PyTree, shared: PyTree, static: Static) -> engine.Result:
    """Every config of ``varying`` (leading axis) run to its end: the three phases."""

    def first(one):
        loop, x0, opt_state = setup(one, shared, static)
        return loop.scan(engine.start(loop.problem, x0, opt_state))

    def last(one, carry, records):
        loop = setup(one, shared, static)[0]
        result = loop.finish(carry, records)
        if static.n:  # fit reports the loss over the whole data set
            result = result._replace(loss=static.f.value(result.params, shared["data"]))
        return result

    carry, records = jax.vmap(first)(varying)
    carry = replay_marked(varying, shared, static, carry)
    return jax.vmap(last)(varying, carry, records)


def replay_marked(varying: PyTree, shared: PyTree, static: Static, carry: PyTree) -> PyTree:
    """:meth:`gdjax.engine.Loop.replay` for a batch, on the marked configs only: they are
    gathered into batches of :func:`replay_batch` and replayed one batch after another."""

    def marked_one(one, c):
        return setup(one, shared, static)[0].marked(c)

    def again(one, c):
        loop, x0, opt_state = setup(one, shared, static)
        return loop.redo(engine.start(loop.problem, x0, opt_state), c, jnp.array(True))

    marked = jax.vmap(marked_one)(varying, carry)
    size = marked.shape[0]
    part = replay_batch(size)
    rounds = -(-size // part)
    order = jnp.nonzero(marked, size=rounds * part, fill_value=size)[0]  # marked first

    def round_(r, carry):
        at = lax.dynamic_slice(order, (r * part,), (part,))  # `size` past the marked ones
        take = lambda a: a.at[at].get(mode="clip")  # noqa: E731
        done = jax.vmap(again)(jax.tree.map(take, varying), jax.tree.map(take, carry))
        return jax.tree.map(lambda a, b: a.at[at].set(b, mode="drop"), carry, done)

    count = jnp.sum(marked, dtype=jnp.int32)
    return lax.fori_loop(0, (count + part - 1) // part, round_, carry)


def replay_batch(size: int) -> int:
    """Configs per replay batch for a batch of ``size``: an eighth of it, at least 16."""
    return min(size, max(16, -(-size // 8)))


@functools.partial(jax.jit, static_argnums=2)
def run_chunk(varying: PyTree, shared: PyTree, static: Static) -> engine.Result:
    """:func:`run_configs` on a chunk whose config axis is sharded over ``static.mesh``."""
    return jax.shard_map(
        lambda v, s: run_configs(v, s, static), mesh=static.mesh, in_specs=(P(AXIS), P()),
        out_specs=P(AXIS), check_vma=False,
    )(varying, shared)


@functools.lru_cache(maxsize=8)
def mesh(devices: tuple[jax.Device, ...]) -> jax.sharding.Mesh:
    """The 1-D mesh named :data:`AXIS` over ``devices``."""
    return jax.make_mesh(
        (len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def put(tree: PyTree, sharding: NamedSharding) -> PyTree:
    """Host arrays -> global arrays; each process fills only the shards it holds."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(one, tree)


def fetch(tree: PyTree) -> PyTree:
    """Global arrays -> host NumPy arrays, whole on every process."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


class Shapes(NamedTuple):
    """One config's program, abstractly: its outcome's structure and a rough memory estimate."""

    treedef: Any
    out_bytes: int  # final parameters, history
    work_bytes: int  # what the loop holds and touches per config


@functools.lru_cache(maxsize=64)
def shapes(static: Static, v_def: Any, s_def: Any, v_avals: tuple, s_avals: tuple) -> Shapes:
    """:class:`Shapes` of the program ``static`` on arguments of these structures and shapes.

    Working set: the carry (parameters, gradient, optimiser state), two more copies of the
    parameters for the step in flight, the records; for ``fit``-style sweeps the batch
    indices and two gathered batches.
    """
    one = jax.tree.unflatten(v_def, [jax.ShapeDtypeStruct(s, d) for s, d in v_avals])
    shared = jax.tree.unflatten(s_def, [jax.ShapeDtypeStruct(s, d) for s, d in s_avals])
    outcome = jax.eval_shape(
        lambda v, s: jax.tree.map(lambda a: a[0], run_configs(
            jax.tree.map(lambda a: a[None], v), s, static._replace(mesh=None))),
        one, shared,
    )
    x0 = one.get("x0", shared["x0"])
    state = _nbytes(jax.eval_shape(static.tx.init, x0))
    work = 4 * _nbytes(x0) + state + _nbytes(outcome.history)
    if static.n:
        sample = sum(math.prod(a.shape[1:]) * np.dtype(a.dtype).itemsize
                     for a in jax.tree.leaves(shared["data"]))
        work += 4 * static.steps * static.batch_size + 2 * static.batch_size * sample
    return Shapes(jax.tree.structure(outcome), _nbytes(outcome), work)


def _nbytes(tree: PyTree) -> int:
    return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree))


def shapes_of(static: Static, varying: PyTree, shared: PyTree) -> Shapes:
    """:func:`shapes` of these arguments (traced once per program and argument shapes)."""
    v_leaves, v_def = jax.tree.flatten(varying)
    s_leaves, s_def = jax.tree.flatten(shared)
    return shapes(
        static, v_def, s_def,
        tuple((np.shape(a)[1:], np.dtype(a.dtype)) for a in v_leaves),
        tuple((np.shape(a), np.dtype(a.dtype)) for a in s_leaves),
    )


def callable_name(obj: Callable | None) -> str | None:
    """A callable's module-qualified name (what a checkpoint's fingerprint can hold)."""
    if obj is None or isinstance(obj, str):
        return obj
    qualname = getattr(obj, "__qualname__", type(obj).__name__)
    return f"{getattr(obj, '__module__', '')}.{qualname}"
