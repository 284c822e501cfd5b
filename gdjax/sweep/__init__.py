"""Sweeps: a grid of hyperparameters, starting points and seeds run as one compiled program.

A sweep is ``jax.vmap`` of the engine's run (:mod:`gdjax.engine`) over a *config axis*, in three
parts:

* :mod:`gdjax.sweep.grid` builds the configs on the host: axes listed, crossed, zipped or drawn
  per seed (:class:`Uniform`, :class:`LogUniform`; starting points with :func:`starts_grid`);
* :mod:`gdjax.sweep.program` is the compiled program: every numeric hyperparameter lives in
  the optimiser state (``optax.inject_hyperparams``), so grid values are array arguments and new
  values never recompile; a config that diverges is frozen at its last finite state with its
  divergence step and never turns another config into NaN;
* :mod:`gdjax.sweep.runner` runs it: chunks within a memory budget, the config axis sharded over
  every device, a progress bar, checkpoints to resume from.

A config run inside a sweep gives what the same config gives alone (``minimize`` or ``fit``,
or ``jax.vmap`` of them); results come back as a :class:`gdjax.SweepResult`.

What ``seed`` means: for ``fit``-style sweeps it orders the mini-batches exactly as
``gdjax.fit(seed=...)`` does (and draws the config's random axes); for ``minimize``-style sweeps
the objective is deterministic, so ``seed`` only draws the random axes (e.g. a random start in an
``x0`` box); with no random axis, configs that differ only in their seed are replicas.

Example:
  >>> import numpy as np, gdjax
  >>> f = lambda x: 0.5 * 4.0 * (x**2).sum()  # curvature a = 4: gradient descent needs eta < 0.5
  >>> res = gdjax.sweep(f, np.float32([1.0]), "sgd", grid={"learning_rate": [0.1, 0.3, 0.6]},
  ...                   steps=300, tol=1e-6)
  >>> res.status.names().tolist(), res.diverged_at.tolist()  # loss x 1.96 a step: past 1e4 f0 at 14
  (['converged', 'converged', 'diverged'], [-1, -1, 14])
"""

from __future__ import annotations

import functools
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gdjax import batching, descent, inputs, optimizers
from gdjax.engine import DIVERGENCE_FACTOR
from gdjax.results import SweepResult
from gdjax.sweep import grid as grid_
from gdjax.sweep import program, runner
from gdjax.sweep.grid import LogUniform, Uniform, starts_grid

__all__ = ["HISTORY_BYTES", "LogUniform", "Uniform", "starts_grid", "sweep"]

PyTree = Any

DEFAULT_MEMORY_BUDGET = 1 << 30
"""Bytes a whole sweep may hold (1 GiB): its result, grid and chunk in flight."""

HISTORY_BYTES = 64 << 20
"""What the default history (loss and gradient norm) of a whole sweep may hold: 64 MiB."""


def sweep(
    f: Callable,
    x0: PyTree,
    optimizer: str | optax.GradientTransformation = "adam",
    *,
    grid: Mapping[str, Any],
    steps: int = 1000,
    data: PyTree = None,
    epochs: int = 1,
    batch_size: int | None = None,
    seed: int = 0,
    samples: int | None = None,
    zip_axes: Sequence[Sequence[str]] = (),
    tol: float | None = None,
    ftol: float | None = None,
    grad: str = "autodiff",
    record_every: int | None = None,
    record_params: bool = False,
    eval_fn: Callable[[PyTree], Any] | None = None,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
    compact: bool | None = None,
    args: Any = (),
    has_aux: bool = False,
    divergence: float | None = DIVERGENCE_FACTOR,
    state: PyTree = None,
    rng: bool = False,
    **hyperparameters: Any,
) -> SweepResult:
    """Run every config of a grid, each as :func:`gdjax.minimize` (or :func:`gdjax.fit`) would.

    Without ``data`` each config minimises ``f(x)`` from ``x0`` for ``steps`` updates (like
    ``minimize``); with ``data`` each trains ``f(params, batch)`` for ``epochs`` (like ``fit``).
    A config run alone with the same values gives the same result.

    Args:
      f: the objective ``f(x) -> scalar``; with ``data``, ``loss_fn(params, batch) -> scalar``.
      x0: the start (the initial parameters); a grid ``x0`` axis replaces it per config and must
        match its structure and shapes (starts are cast to its dtype).
      optimizer: a name from :data:`gdjax.optimizers.OPTIMIZERS` or an optax transformation
        (an ``inject_hyperparams`` one for its hyperparameters to be swept).
      grid: axis name -> values (a list or 1-D array; for ``x0`` an array of starts, one per
        leading index), or a :class:`Uniform` / :class:`LogUniform` drawn per ``seed``.
      steps: updates per config (``minimize``-style).
      data: the data set, a pytree of arrays with a leading sample axis (``fit``-style).
      epochs: passes over ``data`` (``fit``-style).
      batch_size: mini-batch size when not a grid axis (``fit``-style; ``None`` is full batch).
        As an axis, configs are grouped by batch size: one compiled program per batch size.
      seed: the batch-order seed when ``seed`` is not a grid axis (``fit``-style).
      samples: draw this many random points: a ``seed`` axis ``0..samples-1``.
      zip_axes: groups of explicit axes of equal length that vary together instead of being
        crossed, e.g. ``[("learning_rate", "momentum")]``.
      tol: a config has converged once its gradient norm is ``<= tol``.
      ftol: a config has converged once an update changes its loss by ``<= ftol``.
      grad: ``"autodiff"`` or ``"numerical"`` (the seed's central differences; ``minimize``-style).
      record_every: history every this many steps. By default about 100 records per config
        (``fit``-style: once per epoch, as ``fit``), fewer when the sweep is so large that
        its loss and gradient-norm history would pass :data:`HISTORY_BYTES` (a
        1,048,576-config sweep keeps 8); at least the start and the end.
      record_params: record the parameters in the history too.
      eval_fn: ``params -> pytree of scalars`` recorded in ``history.metrics`` (e.g. test accuracy).
      chunk_size: configs per chunk (per device at least 16, a multiple of 8); by default as
        many as keep each device's working set near :data:`gdjax.sweep.runner.CACHE_BYTES`,
        fewer where ``memory_budget`` needs it.
      memory_budget: a ceiling, in bytes, on what the sweep holds at its peak: the result and
        its history and the grid on the host, and for the chunk in flight the compiled
        program's arguments, outputs and temporaries (the objective's intermediates included)
        as XLA reports them, on all devices together, and its outcome on the host. Chunks are
        made small enough; a sweep that cannot fit (its result alone, or the smallest chunk)
        is a ``ValueError`` before any chunk runs. Not counted: the JAX runtime, compiling,
        and the caller's own arrays (``x0``, ``data``) outside the program.
      progress: show a progress bar over chunks; by default only when there are several chunks.
      checkpoint: a directory: each finished chunk is saved there (``.npz`` carrying the sweep's
        fingerprint, its config range and a sha256) beside ``manifest.json``; the same call with
        the same directory skips finished chunks. Another sweep's files there raise
        :class:`gdjax.CheckpointError` (a ``ValueError`` naming what differs); a damaged file is
        deleted and recomputed with a :class:`gdjax.CheckpointWarning`; an objective holding a
        value that cannot be fingerprinted raises ``TypeError``. See
        :mod:`gdjax.sweep.checkpoint`. With several processes it must be a directory they share.
      compact: once three quarters of a chunk's configs have stopped, run the others on in a
        batch a power of two smaller (each size compiles once), so stopped configs stop
        costing. ``None`` (the default) compacts from a sweep's third call with the same
        program and shapes on, or from the first when a chunk could take ``2**28`` config-steps
        or more (:data:`gdjax.sweep.runner.COMPACT_WORK`): the smaller programs' compilation
        costs more than one call of a smaller sweep saves, so such a sweep run once stays one
        program (with several processes ``None`` does not compact: the processes must agree);
        ``True`` always, ``False`` never. Results are the same either way.
      args: extra arguments of ``f``, the same for every config: ``f(x, *args)`` (with data,
        ``f(params, batch, *args)``), as in :func:`gdjax.minimize`.
      has_aux: ``f`` returns ``(loss, aux)``; ``result.aux`` holds each config's ``aux`` at its
        final parameters (with data: over the whole data set).
      divergence: a config has diverged once its loss is non-finite or passes
        ``f0 + divergence * max(|f0|, 1)`` (see :func:`gdjax.minimize`); ``None``: only a
        non-finite loss.
      state: with ``data``, an untrained state threaded through each config's steps, as in
        :func:`gdjax.fit` (``f(params, state, batch, *args) -> (loss, new_state)``,
        ``eval_fn(params, state)``); every config starts from it and ``result.state`` holds each
        config's final state.
      rng: with ``data``, call ``f(..., key=key)`` with a PRNG key new at every step derived
        from the config's seed, as :func:`gdjax.fit` does: a ``seed`` axis varies the keys
        (dropout) along with the batch order, and a config equals ``fit`` with its seed.
      **hyperparameters: fixed hyperparameters of the optimiser for every config (a number, or an
        optax schedule for ``learning_rate``).

    A start that is not all arrays (an equinox module, a pytree with ``None``, ints or functions
    among its leaves) is trained on its floating-point arrays and the other leaves are carried
    unchanged (``result.params`` has the start's structure); such a start cannot be a grid axis.

    Returns:
      A :class:`gdjax.results.SweepResult`, configs in grid order.

    Raises:
      ValueError, TypeError: a bad argument or grid axis (named, with the offending value), a
        checkpoint directory that holds a different sweep (:class:`gdjax.CheckpointError`), or
        an objective a checkpoint cannot fingerprint (``TypeError``).

    Example:
      >>> import numpy as np, gdjax
      >>> from gdjax import functions
      >>> res = gdjax.sweep(functions.himmelblau, np.zeros(2), "sgd", steps=500, tol=1e-4,
      ...                   grid={"x0": gdjax.starts_grid(functions.himmelblau.domain, 3),
      ...                         "learning_rate": [0.01]})
      >>> len(res), res.counts()["converged"]
      (9, 9)
    """
    fit_style = data is not None
    steps = inputs.positive_int("steps", steps)
    epochs = inputs.positive_int("epochs", epochs)
    tol = inputs.optional_tolerance("tol", tol)
    ftol = inputs.optional_tolerance("ftol", ftol)
    divergence = inputs.optional_tolerance("divergence", divergence)
    has_aux = inputs.flag("has_aux", has_aux)
    if grad not in descent.GRAD_SOURCES:
        raise ValueError(f"grad must be one of {descent.GRAD_SOURCES}, got grad={grad!r}")
    if fit_style and grad != "autodiff":
        raise ValueError(f"fit-style sweeps (with data) use autodiff, got grad={grad!r}")
    if record_every is not None:
        record_every = inputs.positive_int("record_every", record_every)
    if chunk_size is not None:
        chunk_size = inputs.positive_int("chunk_size", chunk_size)
    memory_budget = inputs.memory_budget(memory_budget)
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable or None, got eval_fn={eval_fn!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got seed={seed!r}")
    rng = inputs.flag("rng", rng)
    if not fit_style and (state is not None or rng):
        raise ValueError(
            f"state= and rng=True need data (a fit-style sweep), got state={state!r}, rng={rng}")

    with inputs.precision(x0):
        # NumPy starts stay on the host: the program's dispatch moves them (an eager
        # conversion here cost ~0.1 ms a sweep)
        x0, rebuild = inputs.trainable("x0", x0, keep_numpy=True)
        if rebuild is not None and "x0" in grid:
            raise ValueError(
                "grid axis 'x0' needs a start of floating-point arrays only, got x0 with leaves "
                "that are not trained (a module's functions, ints, None): sweep the other axes, "
                "or make the start an array pytree (e.g. eqx.partition(model, eqx.is_array))")
        inputs.injected("optimizer", optimizer, grid, x0)
        f = inputs.bind(f, rebuild)
        eval_fn = None if eval_fn is None else inputs.bind(eval_fn, rebuild)
        args = descent.extra_args(args)
        start_state = batching.model_state(state)
        if fit_style:
            data = jax.tree.map(jnp.asarray, data)
            n = batching.sample_count(data)
            objective = batching.Objective(f, has_aux, start_state is not None, rng)
            first = jax.tree.map(lambda a: a[:1], data)
            loss_dtype = batching.check_objective("f", objective, x0, start_state, first, args)
        else:
            n = 0
            loss_dtype = descent.check_objective("f", f, has_aux, x0, *args).dtype
        tx, fixed_values = optimizers.prepare(optimizer, hyperparameters, x0)
        # checks the fixed hyperparameters against the state, abstractly (no eager work)
        state = inputs.abstract(_init_state(tx), x0, fixed_values)
        fixed = {k: v for k, v in hyperparameters.items() if v is not None and not callable(v)}
        axes = grid_.expand(
            grid, x0=x0, optimizer=optimizer, fixed=fixed, n=n if fit_style else None,
            samples=samples, zip_axes=zip_axes,
        )
        count = grid_.count(axes)
        if "batch_size" in axes:
            batch_sizes = axes["batch_size"]
        else:
            size = grid_.batch_size(n if batch_size is None else batch_size, n) if fit_style else 0
            batch_sizes = np.full(count, size, dtype=np.int64)

        dtypes = {k: np.dtype(v.dtype) for k, v in getattr(state, "hyperparams", {}).items()}
        shared = {
            "x0": x0,
            "hyper": {k: np.asarray(v, dtypes[k]) for k, v in fixed.items()},
            "tol": None if tol is None else np.asarray(tol, loss_dtype),
            "ftol": None if ftol is None else np.asarray(ftol, loss_dtype),
            "divergence": None if divergence is None else np.asarray(divergence, loss_dtype),
            "args": args,
            "data": data,
            "orders": None,
            "seeds": None,
            "seed_index": np.int32(0),
            "state": start_state,
        }
        # (the config index: every program maps at least this over the configs)
        varying = {"config": np.arange(count, dtype=np.int32),
                   "hyper": {k: v.astype(dtypes[k]) for k, v in axes.items()
                             if k not in grid_.SPECIAL}}
        if "x0" in axes:
            varying["x0"] = axes["x0"]
        if fit_style and (np.any(batch_sizes < n) or rng):
            seeds = axes["seed"] if "seed" in axes else np.array([seed])
            unique, index = np.unique(seeds, return_inverse=True)
            if np.any(batch_sizes < n):
                shared["orders"] = grid_.orders(unique, n, epochs)
            if rng:
                shared["seeds"] = batching.run_seed(unique)
            if "seed" in axes:
                varying["seed_index"] = index.astype(np.int32)

        mesh = program.mesh(tuple(jax.devices()))
        groups = []
        sizes = np.unique(batch_sizes) if "batch_size" in axes else batch_sizes[:1]
        for b in sizes:
            if fit_style:
                per_epoch = n // int(b)
                group_steps = epochs * per_epoch
                every = record_every or per_epoch * -(-epochs // 1000)
            else:
                group_steps = steps
                every = record_every or default_record_every(steps, count, loss_dtype)
            static = program.Static(
                f=inputs.static(f), tx=tx, grad=grad, steps=group_steps, record_every=every,
                record_params=bool(record_params), eval_fn=inputs.static(eval_fn), n=n,
                batch_size=int(b), epochs=epochs, mesh=mesh, has_aux=has_aux,
                stateful=start_state is not None, rng=rng, dtype=np.dtype(loss_dtype),
            )
            groups.append((static, np.flatnonzero(batch_sizes == b) if len(sizes) > 1
                           else np.arange(count)))
        out = runner.run_groups(
            groups, varying, shared, chunk_size=chunk_size, memory_budget=memory_budget,
            progress=progress, checkpoint=checkpoint,
            describe=runner.describe(f, optimizer, eval_fn),
            compact=inputs.flag("compact", compact, optional=True),
        )
    out = descent.rebuilt(out, rebuild)  # the carried leaves back (the same for every config)
    return SweepResult(grid=axes, **out._asdict())



def default_record_every(steps: int, configs: int, dtype: Any) -> int:
    """About 100 records per config, fewer when ``configs`` of them would pass
    :data:`HISTORY_BYTES`; at least the start and the end."""
    per_record = 2 * np.dtype(dtype).itemsize * configs
    records = max(1, min(100, HISTORY_BYTES // per_record - 1))
    return -(-steps // records)


@functools.lru_cache(maxsize=256)
def _init_state(tx: optax.GradientTransformation) -> Callable:
    """``(x0, values) -> init_state(tx, x0, values)``, one object per ``tx`` (a cache key)."""
    return functools.partial(optimizers.init_state, tx)
