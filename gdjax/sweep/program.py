"""The compiled programs of a sweep: the engine's own loop under ``vmap``, over a chunk of configs.

A chunk's config axis is sharded over a 1-D mesh named ``sweep``; every program runs
``jax.vmap`` of the engine's per-run code on each device's share (``_shard``):

* :func:`run`: every config's start, then units of the loop (:meth:`gdjax.engine.Loop.unit`)
  until the last one or until so few configs are still running that the runner gathers them
  into a smaller batch (finished configs stop costing), then, when that was the end, the
  results: a sweep whose configs need neither is this one program;
* :func:`leg`: a compaction: the running configs gathered into a smaller batch, run on and put
  back, then the results as :func:`run` gives them;
* :func:`replay`: the diverged configs' replays (:meth:`gdjax.engine.Loop.redo`), run on them
  alone, then every config's results.

Every numeric hyperparameter lives in the optimiser state (``optax.inject_hyperparams``) and
reaches the programs as an array, so new grid values never recompile.
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
    """What a compiled program is specialised on (hashable: a jit static argument)."""

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
    has_aux: bool = False
    stateful: bool = False  # f threads shared["state"] (fit(state=...))
    rng: bool = False  # f takes a per-step key (fit(rng=True))
    dtype: Any = None  # the loss's (the tolerances in shared are cast to it)

    def objective(self) -> batching.Objective:
        """The fit-style objective, ``(params, state, batch, key, *args) -> (loss, (new_state,
        aux))``."""
        return batching.Objective(self.f.value, self.has_aux, self.stateful, self.rng)


def setup(one: PyTree, shared: PyTree, static: Static) -> tuple[engine.Loop, engine.Carry]:
    """One config's loop and its carry before step 1: exactly what ``minimize`` (or ``fit``)
    runs, with its values as arrays."""
    loop = loop_of(one, shared, static)
    x0 = one.get("x0", shared["x0"])
    opt_state = optimizers.init_state(static.tx, x0, {**shared["hyper"], **one["hyper"]})
    return loop, engine.start(loop.problem, x0, opt_state, shared["state"])


def loop_of(one: PyTree, shared: PyTree, static: Static) -> engine.Loop:
    """One config's loop, without its start (which evaluates the objective: tracing it again
    in every program that does not need it cost a 2-D sweep's first call 0.2 s)."""
    x0 = one.get("x0", shared["x0"])
    f = static.f.value
    if static.n:
        indices = None
        seed_index = one.get("seed_index", shared["seed_index"])
        if static.batch_size < static.n:
            # batch_schedule's rows, cut from the config seed's per-epoch sample orders
            orders = shared["orders"][seed_index]
            per_epoch = static.n // static.batch_size
            indices = orders[:, : per_epoch * static.batch_size].reshape(-1, static.batch_size)
        seed = shared["seeds"][seed_index] if static.rng else None
        aux = (shared["data"], indices, shared["args"], seed)
        source = batching.batch_source(static.objective())
        value = batching.batch_value(static.objective())
    else:
        aux = shared["args"]
        source = descent.gradient_source(f, static.grad, static.has_aux)
        loss = descent.value_of(f, static.has_aux)
        value = lambda x, t, args: loss(x, *args)  # noqa: E731
    problem = engine.problem(source, static.tx, x0, aux, shared["tol"], shared["ftol"],
                             shared["divergence"], value, static.stateful, shared["state"],
                             dtype=static.dtype)
    return engine.Loop(problem, static.steps, static.record_every, static.record_params,
                       static.eval_fn.value)


def shape(shared: PyTree, static: Static) -> engine.Loop:
    """The loop's static shape (units, records per unit), without tracing the objective."""
    problem = engine.Problem(None, static.tx, None, shared["tol"], shared["ftol"],
                             extra=engine.reads_loss(static.tx, shared["x0"]))
    return engine.Loop(problem, static.steps, static.record_every)


def carry_axes(varying: PyTree, shared: PyTree, static: Static) -> PyTree:
    """The config axis of each leaf of a chunk's carry between programs: 0 where a leaf
    depends on its config, ``None`` where it does not (an optimiser's step count, a fixed
    hyperparameter), so that every program keeps those unbatched as one run's loop does."""
    return _outcome(varying, shared, static)[0]


def _outcome(varying: PyTree, shared: PyTree, static: Static) -> tuple:
    """``(carry_axes, carry, buffer, result)``: the carry's config axes, and one config's carry,
    record buffer and result (shapes), from one trace of a unit and a finish per program and
    argument shapes (cached: every program asks, and tracing them again cost a first call
    0.1 s)."""
    key = (static, jax.tree.structure(varying), jax.tree.structure(shared),
           *((np.shape(a)[1:], jnp.result_type(a)) for a in jax.tree.leaves(varying)),
           *((np.shape(a), jnp.result_type(a)) for a in jax.tree.leaves(shared)))
    if key not in _outcomes:

        def outcome(one, shared):
            loop, carry = setup(one, shared, static)
            after, _ = loop.unit(carry, jnp.int32(0))
            buffer = loop.empty(carry)
            return carry, after, buffer, _result(one, shared, carry, buffer, static)

        (first, later, _, _), (carry, _, buffer, result) = engine.batched_leaves(
            outcome, varying, shared, in_axes=(0, None), shapes=True)
        one = lambda tree: jax.tree.map(  # noqa: E731
            lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), tree)
        if len(_outcomes) >= 64:
            _outcomes.clear()
        _outcomes[key] = (jax.tree.map(lambda a, b: 0 if a or b else None, first, later),
                          one(carry), one(buffer), one(result))
    return _outcomes[key]


def _zeros(shapes: PyTree, batch: int) -> PyTree:
    """Zeros of these one-config shapes for ``batch`` configs."""
    return jax.tree.map(lambda a: jnp.zeros((batch, *a.shape), a.dtype), shapes)


_outcomes: dict[tuple, tuple] = {}


def _specs(axes: PyTree) -> PyTree:
    return jax.tree.map(lambda a: P() if a is None else P(AXIS), axes,
                        is_leaf=lambda a: a is None)


def _shard(fn: Callable, static: Static, in_specs: tuple, out_specs: Any) -> Callable:
    return jax.shard_map(fn, mesh=static.mesh, in_specs=in_specs, out_specs=out_specs,
                         check_vma=False)


def _begin(varying: PyTree, shared: PyTree, static: Static, axes: PyTree) -> tuple:
    carry = jax.vmap(lambda v: setup(v, shared, static)[1], out_axes=axes)(varying)
    batch = len(jax.tree.leaves(varying)[0])
    return carry, _zeros(_outcome(varying, shared, static)[2], batch)


def _leg(varying, shared, carry, buffer, unit, stop_at, static, axes) -> tuple:
    loop = shape(shared, static)

    def running(carry):
        return lax.psum(jnp.sum(carry.flag == 0, dtype=jnp.int32), AXIS)

    def more(state):
        carry, _, i = state
        return (i < loop.units) & (running(carry) > stop_at)

    def body(state):
        carry, buffer, i = state
        carry, records = jax.vmap(lambda v, c: loop_of(v, shared, static).unit(c, i),
                                  in_axes=(0, axes), out_axes=(axes, 0))(varying, carry)
        return carry, loop.write(buffer, records, i, axis=1), i + 1

    carry, buffer, unit = lax.while_loop(more, body, (carry, buffer, unit))
    return carry, buffer, unit, running(carry)


def _marked(varying, shared, carry, static, axes) -> jax.Array:
    return jax.vmap(lambda v, c: loop_of(v, shared, static).marked(c), in_axes=(0, axes))(
        varying, carry)


def _finish(varying, shared, carry, buffer, static, axes) -> engine.Result:
    return jax.vmap(lambda v, c, b: _result(v, shared, c, b, static),
                    in_axes=(0, axes, 0))(varying, carry, buffer)


def _result(one, shared, carry, buffer, static) -> engine.Result:
    """One config's :class:`gdjax.Result` from its last carry and record buffer."""
    loop = loop_of(one, shared, static)
    result = loop.finish(carry, buffer)
    f, args = static.f.value, shared["args"]
    if static.n:  # fit reports the loss over the whole data set
        seed = loop.problem.aux[3]
        loss, (_, out) = static.objective()(result.params, result.state, shared["data"],
                                            batching.step_key(seed, jnp.int32(static.steps)),
                                            *args)
        result = result._replace(loss=loss, aux=out if static.has_aux else None)
    elif static.has_aux:
        result = result._replace(aux=f(result.params, *args)[1])
    # history.step is the same for every config: the runner adds it (computing it per config
    # and fetching it cost a 65,536-config sweep with the default history 26 MB)
    return result._replace(history=result.history._replace(step=None))


@functools.partial(engine.jit, static_argnums=3)
def run(varying: PyTree, shared: PyTree, stop_at: jax.Array, static: Static) -> tuple:
    """A chunk from its start: its first leg (see :func:`leg`) and, should that have run every
    config to its end with none to replay, their results: ``(carry, buffer, counts, marked,
    result)`` with ``counts`` = ``[next unit, running, to replay]`` (one transfer tells the
    runner which of them to use) and ``marked`` the configs to replay."""
    axes = carry_axes(varying, shared, static)

    loop = shape(shared, static)

    def body(v, s, stop_at):
        if loop.evaluate:  # runs can stop early: legs that can end for a compaction
            carry, buffer = _begin(v, s, static, axes)
            carry, buffer, unit, running = _leg(v, s, carry, buffer, jnp.int32(0), stop_at,
                                                static, axes)
        else:  # only a divergence stops a run: every unit in one scan, records as its output
            def scan(one):
                loop, carry = setup(one, s, static)
                return loop.scan(carry)

            carry, buffer = jax.vmap(scan, out_axes=(axes, 0))(v)
            unit = jnp.int32(loop.units)
            running = lax.psum(jnp.sum(carry.flag == 0, dtype=jnp.int32), AXIS)
        return _ended(v, s, carry, buffer, unit, running, static, axes)

    kept = (_specs(axes), P(AXIS)) if loop.evaluate else (None, None)  # (see _ended)
    return _shard(body, static, (P(AXIS), P(), P()), (*kept, P(), P(AXIS), P(AXIS)))(
        varying, shared, stop_at)


def _ended(varying, shared, carry, buffer, unit, running, static, axes) -> tuple:
    """What :func:`run` and :func:`leg` return after their legs: the chunk's carry and buffer
    (``None`` where no leg can follow: only when runs can stop early), ``[next unit, running,
    to replay]``, the configs to replay, and the results when that was the chunk's end (zeros
    otherwise; :func:`replay` mends the replayed configs' rows)."""
    loop = shape(shared, static)
    marked = _marked(varying, shared, carry, static, axes)
    replays = lax.psum(jnp.sum(marked, dtype=jnp.int32), AXIS)
    counts = jnp.stack([unit, running, replays])
    finish = lambda c, b: _finish(varying, shared, c, b, static, axes)  # noqa: E731
    if not loop.evaluate:  # only a divergence stops a run: no leg follows this one
        return None, None, counts, marked, finish(carry, buffer)
    # a leg that stops for a compaction: its results would go unused (skipping them: 8-D
    # quadratic to tol, default history, 13% faster; without legs the cond costs 3-9% at 65,536
    # configs with history, so only here)
    done = (unit >= loop.units) | (running == 0)
    zeros = _zeros(_outcome(varying, shared, static)[3], len(jax.tree.leaves(varying)[0]))
    result = lax.cond(done, finish, lambda c, b: zeros, carry, buffer)
    return carry, buffer, counts, marked, result


@functools.partial(engine.jit, static_argnums=(7, 8), donate_argnums=(2, 3))
def leg(varying: PyTree, shared: PyTree, carry: engine.Carry, buffer: tuple, rows: jax.Array,
        unit: jax.Array, stop_at: jax.Array, static: Static, by_config: NamedSharding) -> tuple:
    """A compaction: the configs ``rows`` of a chunk gathered into a batch of their own and run
    on from ``unit`` until the last unit or until at most ``stop_at`` of them are running, put
    back into the chunk's carry and buffer; then what :func:`run` returns."""
    axes = carry_axes(varying, shared, static)
    flat = flat_axes(axes)
    specs = _specs(axes)
    every = (0,) * len(jax.tree.leaves(buffer))

    def picked(tree, leaf_axes):
        leaves, treedef = jax.tree.flatten(tree)
        return jax.tree.unflatten(treedef, [
            a if ax is None else jax.lax.with_sharding_constraint(a[rows], by_config)
            for a, ax in zip(leaves, leaf_axes, strict=True)])

    def put(tree, new, leaf_axes):
        leaves, treedef = jax.tree.flatten(tree)
        return jax.tree.unflatten(treedef, [
            r if ax is None else a.at[rows].set(r)
            for a, r, ax in zip(leaves, jax.tree.leaves(new), leaf_axes, strict=True)])

    some, some_buffer, unit, running = _shard(
        lambda *a: _leg(*a, static, axes), static, (P(AXIS), P(), specs, P(AXIS), P(), P()),
        (specs, P(AXIS), P(), P()),
    )(picked(varying, (0,) * len(jax.tree.leaves(varying))), shared, picked(carry, flat),
      picked(buffer, every), unit, stop_at)
    carry, buffer = put(carry, some, flat), put(buffer, some_buffer, every)
    return _shard(
        lambda v, s, c, b, u, r: _ended(v, s, c, b, u, r, static, axes), static,
        (P(AXIS), P(), specs, P(AXIS), P(), P()), (specs, P(AXIS), P(), P(AXIS), P(AXIS)),
    )(varying, shared, carry, buffer, unit, running)


@functools.partial(engine.jit, static_argnums=(4, 5), donate_argnums=2)
def replay(varying: PyTree, shared: PyTree, result: engine.Result, at: jax.Array,
           static: Static, by_config: NamedSharding) -> engine.Result:
    """``result`` with the configs ``at`` run again from their start
    (:meth:`gdjax.engine.Loop.redo`), in a batch of their own: their rows finished anew from
    the replay's last carry and their recorded history (the records before a replayed stop are
    the run's own; from it on :meth:`gdjax.engine.Loop.finish` settles them again)."""

    def rows(tree):
        return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a[at], by_config), tree)

    def one(v, r):
        loop, first = setup(v, shared, static)
        c = loop.redo(first, first, jnp.array(True))
        h = r.history
        return _result(v, shared, c, (h.loss, h.grad_norm, h.params, h.metrics), static)

    again = _shard(lambda v, r: jax.vmap(one)(v, r), static, (P(AXIS), P(AXIS)), P(AXIS))(
        rows(varying), rows(result))
    return jax.tree.map(lambda a, r: a.at[at].set(r), result, again)


def flat_axes(axes: PyTree) -> tuple:
    """A tree of 0 / ``None`` (:func:`carry_axes`) as a flat, hashable tuple."""
    return tuple(jax.tree.leaves(axes, is_leaf=lambda a: a is None))


@functools.lru_cache(maxsize=8)
def mesh(devices: tuple[jax.Device, ...]) -> jax.sharding.Mesh:
    """The 1-D mesh named :data:`AXIS` over ``devices``."""
    return jax.make_mesh(
        (len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def put(tree: PyTree, sharding: NamedSharding) -> PyTree:
    """Host arrays -> global arrays; each process fills only the shards it holds."""
    if jax.process_count() == 1:
        if sharding.num_devices == 1:
            # jit's own dispatch moves host arrays to its one device (and a committed array's
            # mesh would clash with shard_map's inside the program)
            return tree
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
    """One config's programs, abstractly: the outcome's structure, a rough memory estimate and
    the carry's config axes (:func:`carry_axes`)."""

    treedef: Any
    out_bytes: int  # final parameters, history
    work_bytes: int  # what the loop holds and touches per config
    axes: tuple  # flat_axes of the carry
    flag_axis: int | None  # the carry's flag's


@functools.lru_cache(maxsize=64)
def shapes(static: Static, v_def: Any, s_def: Any, v_avals: tuple, s_avals: tuple) -> Shapes:
    """:class:`Shapes` of the programs ``static`` on arguments of these structures and shapes.

    Working set: the carry (parameters, gradient, optimiser state) and its copy while a leg
    writes the next, two more copies of the parameters for the step in flight, the record
    buffer; for ``fit``-style sweeps the batch indices and two gathered batches.
    """
    one = jax.tree.unflatten(v_def, [jax.ShapeDtypeStruct(s, d) for s, d in v_avals])
    shared = jax.tree.unflatten(s_def, [jax.ShapeDtypeStruct(s, d) for s, d in s_avals])
    batched = jax.tree.map(lambda a: jax.ShapeDtypeStruct((2, *a.shape), a.dtype), one)
    axes, carry, buffer, result = _outcome(batched, shared, static)
    work = 2 * _nbytes(carry) + 2 * _nbytes(one.get("x0", shared["x0"])) + _nbytes(buffer)
    if static.n:
        sample = sum(math.prod(a.shape[1:]) * np.dtype(a.dtype).itemsize
                     for a in jax.tree.leaves(shared["data"]))
        work += 4 * static.steps * static.batch_size + 2 * static.batch_size * sample
    return Shapes(jax.tree.structure(result), _nbytes(result), work, flat_axes(axes), axes.flag)


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

