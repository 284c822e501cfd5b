"""Sweeps: a grid of hyperparameters, starting points and seeds run as one compiled program.

A sweep is ``jax.vmap`` of the one descent loop (:func:`gdjax.engine.run`) over a *config axis*:

* every numeric hyperparameter lives in the optimiser state (``optax.inject_hyperparams``), so
  the grid values are array arguments of one compiled program: new values of the same shape never
  recompile;
* a config that diverges is frozen at its last finite state with its divergence step; it never
  turns another config into NaN, and the sweep never raises because some configs diverged;
* the config axis is sharded over every device of a 1-D mesh named ``sweep`` (all the global
  devices: after ``jax.distributed.initialize()`` every process calls the same ``sweep`` and gets
  the whole result), padded to a multiple of the device count;
* configs run in equal chunks (one compilation serves every chunk), by default small enough for
  each device's working set to stay in cache and always within a memory budget, with a progress
  bar and, when asked, one checkpoint file per finished chunk so an interrupted sweep resumes
  where it stopped.

Grids
-----
``grid`` maps axis names to values. The names are the hyperparameters of the optimiser
(``learning_rate``, ``momentum``, ``b1``...), ``x0`` (starting points, one per leading index:
see :func:`starts_grid`), ``seed`` and, for ``fit``-style sweeps, ``batch_size``. Values are
listed explicitly (a list or 1-D array), and the configs are their Cartesian product, first axis
slowest (``zip_axes`` pairs axes up instead). An axis may also be *drawn at random*:
:class:`Uniform` or :class:`LogUniform` (for a start, ``Uniform(low, high)`` is a box). A random
axis is a function of the config's ``seed``: each config draws its value from
``jax.random.key(seed)``, so ``samples=N`` (shorthand for a ``seed`` axis ``0..N-1``) gives ``N``
random points, and a config run again with the same seed draws the same value.

What ``seed`` means: for ``fit``-style sweeps it orders the mini-batches exactly as
``gdjax.fit(seed=...)`` does (and draws the config's random axes); for ``minimize``-style sweeps
the objective is deterministic, so ``seed`` only draws the random axes (e.g. a random start in an
``x0`` box); with no random axis, configs that differ only in their seed are replicas.

Example:
  >>> import numpy as np, gdjax
  >>> f = lambda x: 0.5 * 4.0 * (x**2).sum()  # curvature a = 4: gradient descent needs eta < 0.5
  >>> res = gdjax.sweep(f, np.float32([1.0]), "sgd", grid={"learning_rate": [0.1, 0.3, 0.6]},
  ...                   steps=300, tol=1e-6)
  >>> res.status.tolist(), res.diverged_at.tolist()  # float32 overflows at |1 - 0.6 a|^131
  (['converged', 'converged', 'diverged'], [-1, -1, 131])
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import numbers
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gdjax import batching, descent, engine, inputs, optimizers
from gdjax.results import SweepResult

PyTree = Any

AXIS = "sweep"
"""The name of the mesh axis the configs are sharded over."""

CONFIGS = "configs"
"""The name of the ``vmap`` axis over one device's configs (the engine decides per device)."""

DEFAULT_MEMORY_BUDGET = 1 << 30
"""Bytes one chunk of configs may use per device (1 GiB), by a rough estimate per config."""

CACHE_BYTES = 64 << 20
"""Working set of one chunk per device by default (64 MiB; the memory budget caps it too).

Measured with the segmented engine (2-core CPU, Adam on Rosenbrock): one chunk of 65,536 2-D
configs ran 15% faster than 8 cache-sized (1 MiB) chunks, 4096 100-D configs 30% faster, 512
1000-D configs 10% faster; a 1 MiB limit only paid off with the old per-step bookkeeping."""

_SPECIAL = ("x0", "seed", "batch_size")


class Uniform(NamedTuple):
    """A random axis, uniform on ``[low, high)``; for ``x0`` a box (bounds broadcast to x0).

    Example: a random start in a test function's box, ``Uniform(*np.array(f.domain).T)``.
    """

    low: Any
    high: Any


class LogUniform(NamedTuple):
    """A random axis whose logarithm is uniform: ``exp(U[log low, log high))``, ``0 < low < high``.

    The usual way to sample learning rates.
    """

    low: float
    high: float


def starts_grid(domain: Sequence[tuple[float, float]], n: int | Sequence[int]) -> np.ndarray:
    """A regular grid of starting points over a box, one start per row (first coordinate slowest).

    Args:
      domain: ``((lo, hi), ...)``, one pair per coordinate (``gdjax.functions.<f>.domain``).
      n: points per coordinate, one number for all or one per coordinate.

    Returns:
      float64 array of shape ``(prod(n), len(domain))``, for ``grid={"x0": ...}``.

    Example:
      >>> starts_grid(((-1.0, 1.0), (0.0, 2.0)), 2).tolist()
      [[-1.0, 0.0], [-1.0, 2.0], [1.0, 0.0], [1.0, 2.0]]
    """
    box = np.asarray(domain, dtype=np.float64)
    if box.ndim != 2 or box.shape[1] != 2 or box.shape[0] < 1:
        raise ValueError(f"domain must be a sequence of (lo, hi) pairs, got domain={domain!r}")
    if not np.all(np.isfinite(box)) or np.any(box[:, 0] > box[:, 1]):
        raise ValueError(f"domain must hold finite pairs with lo <= hi, got domain={domain!r}")
    counts = [n] * box.shape[0] if isinstance(n, numbers.Integral) else list(n)
    if len(counts) != box.shape[0]:
        raise ValueError(f"n must give one count per coordinate ({box.shape[0]}), got n={n!r}")
    counts = [inputs.positive_int("n", k) for k in counts]
    axes = [np.linspace(lo, hi, k) for (lo, hi), k in zip(box, counts, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, box.shape[0])


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
      record_every: history every this many steps; by default about 100 records per config
        (``fit``-style: once per epoch, as ``fit``).
      record_params: record the parameters in the history too.
      eval_fn: ``params -> pytree of scalars`` recorded in ``history.metrics`` (e.g. test accuracy).
      chunk_size: configs per chunk (per device at least 16, a multiple of 8); by default as
        many as keep each device's working set near :data:`CACHE_BYTES`, within
        ``memory_budget``.
      memory_budget: bytes one chunk may use per device, by a rough estimate per config: its
        outputs (history included) plus the loop's working set (copies of parameters and
        optimiser state; batch indices and batches for ``fit``-style sweeps).
      progress: show a progress bar over chunks; by default only when there are several chunks.
      checkpoint: a directory: each finished chunk is saved there (``.npz``) beside a JSON manifest
        holding a fingerprint of the sweep; the same call with the same directory skips finished
        chunks. With several processes it must be a directory they share.
      **hyperparameters: fixed hyperparameters of the optimiser for every config (a number, or an
        optax schedule for ``learning_rate``).

    Returns:
      A :class:`gdjax.results.SweepResult`, configs in grid order.

    Raises:
      ValueError, TypeError: a bad argument or grid axis (named, with the offending value), or a
        checkpoint directory that holds a different sweep.

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
    if grad not in descent.GRAD_SOURCES:
        raise ValueError(f"grad must be one of {descent.GRAD_SOURCES}, got grad={grad!r}")
    if fit_style and grad != "autodiff":
        raise ValueError(f"fit-style sweeps (with data) use autodiff, got grad={grad!r}")
    if record_every is not None:
        record_every = inputs.positive_int("record_every", record_every)
    if chunk_size is not None:
        chunk_size = inputs.positive_int("chunk_size", chunk_size)
    memory_budget = inputs.positive_int("memory_budget", memory_budget)
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable or None, got eval_fn={eval_fn!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got seed={seed!r}")

    with inputs.precision(x0):
        # NumPy starts stay on the host: the program's dispatch moves them (an eager
        # conversion here cost ~0.1 ms a sweep)
        x0 = inputs.float_params("x0", x0, keep_numpy=True)
        if fit_style:
            data = jax.tree.map(jnp.asarray, data)
            n = batching.sample_count(data)
            loss_dtype = inputs.scalar_function(
                "f", f, x0, jax.tree.map(lambda a: a[:1], data)
            ).dtype
        else:
            n = 0
            loss_dtype = inputs.scalar_function("f", f, x0).dtype
        tx, fixed_values = optimizers.prepare(optimizer, hyperparameters)
        # checks the fixed hyperparameters against the state, abstractly (no eager work)
        state = inputs.abstract(_init_state(tx), x0, fixed_values)
        fixed = {k: v for k, v in hyperparameters.items() if v is not None and not callable(v)}
        axes = _expand(
            grid, x0=x0, optimizer=optimizer, fixed=fixed, n=n if fit_style else None,
            samples=samples, zip_axes=zip_axes,
        )
        count = _count(axes)
        if "batch_size" in axes:
            batch_sizes = axes["batch_size"]
        else:
            size = _batch_size(n if batch_size is None else batch_size, n) if fit_style else 0
            batch_sizes = np.full(count, size, dtype=np.int64)

        dtypes = {k: np.dtype(v.dtype) for k, v in getattr(state, "hyperparams", {}).items()}
        shared = {
            "x0": x0,
            "hyper": {k: np.asarray(v, dtypes[k]) for k, v in fixed.items()},
            "tol": None if tol is None else np.asarray(tol, loss_dtype),
            "ftol": None if ftol is None else np.asarray(ftol, loss_dtype),
            "data": data,
            "orders": None,
            "seed_index": np.int32(0),
        }
        varying = {"hyper": {k: v.astype(dtypes[k]) for k, v in axes.items() if k not in _SPECIAL}}
        if "x0" in axes:
            varying["x0"] = axes["x0"]
        if fit_style and np.any(batch_sizes < n):
            seeds = axes["seed"] if "seed" in axes else np.array([seed])
            unique, index = np.unique(seeds, return_inverse=True)
            shared["orders"] = _orders(unique, n, epochs)
            if "seed" in axes:
                varying["seed_index"] = index.astype(np.int32)

        mesh = _mesh(tuple(jax.devices()))
        groups = []
        sizes = np.unique(batch_sizes) if "batch_size" in axes else batch_sizes[:1]
        for b in sizes:
            if fit_style:
                per_epoch = n // int(b)
                group_steps = epochs * per_epoch
                every = record_every or per_epoch * -(-epochs // 1000)
            else:
                group_steps, every = steps, record_every or -(-steps // 100)
            static = _Static(
                f=f, tx=tx, grad=grad, steps=group_steps, record_every=every,
                record_params=bool(record_params), eval_fn=eval_fn, n=n, batch_size=int(b),
                epochs=epochs, mesh=mesh,
            )
            groups.append((static, np.flatnonzero(batch_sizes == b) if len(sizes) > 1
                           else np.arange(count)))
        out = _run_groups(
            groups, varying, shared, chunk_size=chunk_size, memory_budget=memory_budget,
            progress=progress, checkpoint=checkpoint, describe=_describe(f, optimizer, eval_fn),
        )
    return SweepResult(
        grid=axes,
        params=out.params,
        final_loss=out.loss,
        best_loss=out.best_loss,
        grad_norm=out.grad_norm,
        status=engine.status_names(out.status),
        steps=out.steps,
        diverged_at=out.diverged_at,
        history=out.history,
    )


# --- the grid -----------------------------------------------------------------------------------


def _expand(
    grid: Mapping[str, Any],
    *,
    x0: PyTree,
    optimizer: str | optax.GradientTransformation,
    fixed: Mapping[str, Any],
    n: int | None,
    samples: int | None,
    zip_axes: Sequence[Sequence[str]],
) -> dict[str, Any]:
    """Every axis as per-config values (leading config axis), in the order of ``grid``."""
    if not isinstance(grid, Mapping):
        raise TypeError(f"grid must be a mapping of axis name -> values, got grid={grid!r}")
    grid = dict(grid)
    if samples is not None:
        samples = inputs.positive_int("samples", samples)
        if "seed" in grid:
            raise ValueError(
                f"give either samples= or a 'seed' grid axis, not both (samples={samples})"
            )
        grid["seed"] = np.arange(samples)
    hyper_names = optimizers.injectable_names(optimizer, x0)
    valid = (*hyper_names, "x0", "seed", *(("batch_size",) if n is not None else ()))
    for name in grid:
        if name not in valid:
            raise ValueError(f"unknown grid axis {name!r}; valid axes here: {', '.join(valid)}")
        if name in fixed:
            raise ValueError(
                f"{name!r} is both a grid axis and a fixed hyperparameter "
                f"({name}={fixed[name]!r}); give it in one place"
            )
    drawn = [k for k, v in grid.items() if isinstance(v, Uniform | LogUniform)]
    listed = {k: _listed(k, v, x0, n) for k, v in grid.items() if k not in drawn}
    if drawn and "seed" not in listed:
        raise ValueError(
            f"random axes {drawn} are drawn per seed: add a 'seed' axis or pass samples=N"
        )

    factors = _factors(listed, zip_axes, drawn)
    lengths = [_length(listed[group[0]]) for group in factors]
    axes: dict[str, Any] = {}
    if len(factors) == 1:  # one axis (or one zipped group): the grid is its values as they are
        axes = {name: listed[name] for name in factors[0]}
    else:
        index = np.indices(lengths).reshape(len(lengths), -1) if factors else np.zeros((0, 1), int)
        for group, idx in zip(factors, index, strict=True):
            for name in group:
                axes[name] = jax.tree.map(lambda a, idx=idx: a[idx], listed[name])
    for name in drawn:
        axes[name] = _draw(name, grid[name], axes["seed"], x0)
    for name in axes:
        if name in hyper_names:
            _check_values(name, axes[name], optimizer, x0)
    return {name: axes[name] for name in grid}


def _listed(name: str, values: Any, x0: PyTree, n: int | None) -> Any:
    """An explicit axis as arrays with a leading axis, checked."""
    if name == "x0":
        return _starts(values, x0)
    if isinstance(values, Mapping) or isinstance(values, str):
        raise TypeError(f"grid axis {name!r} must be a list or 1-D array, got {values!r}")
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"grid axis {name!r} must be 1-D, got shape {a.shape}: {_short(values)}")
    if a.size == 0:
        raise ValueError(f"grid axis {name!r} is empty; give at least one value")
    if name in ("seed", "batch_size"):
        if a.dtype.kind not in "iu":
            raise TypeError(f"grid axis {name!r} must hold integers, got {_short(values)}")
        if name == "seed" and (a.min() < -(2**31) or a.max() >= 2**31):
            raise ValueError(f"grid axis 'seed' must hold int32 values, got {_short(values)}")
        if name == "batch_size":
            for b in np.unique(a):
                _batch_size(int(b), n)
        return a.astype(np.int64)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"grid axis {name!r} must hold numbers, got {_short(values)}")
    a = a.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        raise ValueError(f"grid axis {name!r} must be finite, got {name}={a[bad[0]]!r}")
    return a


def _starts(values: Any, x0: PyTree) -> PyTree:
    """``grid["x0"]``: starts with the structure of ``x0`` and a leading axis, cast to its dtype."""
    leaves, treedef = jax.tree.flatten(x0)
    if treedef.num_nodes == 1:  # x0 is a single array: any array-like of starts
        starts = [values]
    else:
        try:
            starts = treedef.flatten_up_to(values)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"grid axis 'x0' must have the structure of x0 ({treedef}); {e}"
            ) from None
    out, k = [], None
    for leaf, start in zip(leaves, starts, strict=True):
        start = np.asarray(start)
        if start.shape[1:] != leaf.shape or start.ndim != leaf.ndim + 1:
            raise ValueError(
                f"grid axis 'x0' must hold one start per leading index, shape (k, *x0.shape) = "
                f"(k, {', '.join(map(str, leaf.shape))}), got shape {start.shape}"
            )
        if start.dtype.kind not in "fiu":
            raise TypeError(f"grid axis 'x0' must hold numbers, got dtype {start.dtype}")
        if k not in (None, start.shape[0]):
            raise ValueError(f"grid axis 'x0' leaves disagree on the number of starts: {k}, "
                             f"{start.shape[0]}")
        k = start.shape[0]
        if k == 0:
            raise ValueError("grid axis 'x0' is empty; give at least one start")
        bad = np.argwhere(~np.isfinite(start))
        if bad.size:
            raise ValueError(
                f"grid axis 'x0' must be finite, got start {bad[0][0]} = {start[bad[0][0]]!r}"
            )
        out.append(start.astype(leaf.dtype))
    return jax.tree.unflatten(treedef, out)


def _factors(
    listed: Mapping[str, Any], zip_axes: Sequence[Sequence[str]], drawn: Sequence[str]
) -> list[tuple[str, ...]]:
    """The crossed factors: single axes and zipped groups, in the order of their first axis."""
    if isinstance(zip_axes, str) or not isinstance(zip_axes, Sequence):
        raise TypeError(f"zip_axes must be a list of tuples of axis names, got {zip_axes!r}")
    owner: dict[str, tuple[str, ...]] = {}
    for group in zip_axes:
        if isinstance(group, str) or not isinstance(group, Sequence) or len(group) < 2:
            raise ValueError(f"each zip_axes entry must name 2 or more axes, got {group!r}")
        group = tuple(group)
        for name in group:
            if name in drawn:
                raise ValueError(f"random axis {name!r} cannot be zipped: it is drawn per seed")
            if name not in listed:
                raise ValueError(f"zip_axes names {name!r}, which is not a grid axis")
            if name in owner:
                raise ValueError(f"axis {name!r} appears in more than one zip_axes group")
            owner[name] = group
        lengths = {name: _length(listed[name]) for name in group}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"zipped axes must have equal lengths, got {lengths}")
    factors = []
    for name in listed:
        group = owner.get(name, (name,))
        if group not in factors:
            factors.append(group)
    return factors


def _length(values: Any) -> int:
    return int(np.shape(jax.tree.leaves(values)[0])[0])


def _count(axes: Mapping[str, Any]) -> int:
    return _length(next(iter(axes.values()))) if axes else 1


def _draw(name: str, dist: Uniform | LogUniform, seeds: np.ndarray, x0: PyTree) -> Any:
    """Per-config draws of a random axis from ``fold_in(key(seed), crc32(name))``."""
    tag = zlib.crc32(name.encode()) & 0x7FFFFFFF
    unique, inverse = np.unique(seeds, return_inverse=True)
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), tag))(
        jnp.asarray(unique, jnp.int32)
    )

    def uniform(shape, leaf=0):
        draw = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, leaf), shape))
        return np.asarray(draw(keys), np.float64)[inverse]

    if name == "x0":
        if not isinstance(dist, Uniform):
            raise TypeError(f"a random start is a box: use Uniform(low, high), got {dist!r}")
        leaves, treedef = jax.tree.flatten(x0)
        lows, highs = (_like_x0(name, bound, x0) for bound in dist)
        out = []
        for i, (leaf, lo, hi) in enumerate(zip(leaves, lows, highs, strict=True)):
            _check_interval(name, dist, lo, hi)
            out.append((lo + uniform(leaf.shape, i) * (hi - lo)).astype(leaf.dtype))
        return jax.tree.unflatten(treedef, out)
    lo, hi = (np.asarray(v, np.float64) for v in dist)
    if lo.shape or hi.shape:
        raise ValueError(f"grid axis {name!r}: {type(dist).__name__} bounds must be numbers, "
                         f"got {dist!r}")
    _check_interval(name, dist, lo, hi)
    u = uniform(())
    if isinstance(dist, LogUniform):
        return np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo)))
    return lo + u * (hi - lo)


def _like_x0(name: str, bound: Any, x0: PyTree) -> list[np.ndarray]:
    leaves, treedef = jax.tree.flatten(x0)
    parts = [bound] if treedef.num_nodes == 1 else None
    if parts is None:
        try:
            parts = treedef.flatten_up_to(bound)
        except (ValueError, TypeError):
            parts = [bound] * len(leaves)
    try:
        return [np.broadcast_to(np.asarray(b, np.float64), leaf.shape)
                for b, leaf in zip(parts, leaves, strict=True)]
    except ValueError:
        raise ValueError(
            f"grid axis {name!r}: box bounds must broadcast to x0's shape, got {bound!r}"
        ) from None


def _check_interval(name: str, dist: Any, lo: np.ndarray, hi: np.ndarray) -> None:
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo < hi)):
        raise ValueError(f"grid axis {name!r} needs finite bounds with low < high, got {dist!r}")
    if isinstance(dist, LogUniform) and np.any(lo <= 0):
        raise ValueError(f"grid axis {name!r}: LogUniform needs low > 0, got {dist!r}")


def _check_values(name: str, values: np.ndarray, optimizer: Any, x0: PyTree) -> None:
    """Range checks of the optimiser (e.g. a positive learning rate) on an axis's extremes."""
    if not isinstance(optimizer, str):
        return
    for v in (values.min(), values.max()):
        try:
            optimizers.prepare(optimizer, {name: float(v)})
        except ValueError as e:
            raise ValueError(f"grid axis {name!r}: {e}") from None


def _batch_size(b: Any, n: int | None) -> int:
    if n is None:
        raise ValueError(f"batch_size is for fit-style sweeps (with data), got batch_size={b!r}")
    b = inputs.positive_int("batch_size", b)
    if b > n:
        raise ValueError(f"batch_size must be at most the number of samples ({n}), got "
                         f"batch_size={b}")
    return b


def _orders(seeds: np.ndarray, n: int, epochs: int) -> np.ndarray:
    """Each seed's sample order per epoch, ``(len(seeds), epochs, n)``, as ``fit`` draws them.

    ``batching.epoch_orders`` per seed; a batch size ``b`` keeps the first ``(n // b) * b`` of
    each, in rows of ``b`` (as ``batch_schedule`` does). Drawn once here on the host, like
    ``fit``, rather than inside every compiled program: one table serves all batch sizes.
    """
    return np.stack([batching.epoch_orders(int(s), n, epochs) for s in seeds])


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@functools.lru_cache(maxsize=256)
def _init_state(tx: optax.GradientTransformation) -> Callable:
    """``(x0, values) -> init_state(tx, x0, values)``, one object per ``tx`` (a cache key)."""
    return functools.partial(optimizers.init_state, tx)


# --- the compiled program -----------------------------------------------------------------------


class _Static(NamedTuple):
    """What one compiled program is specialised on (hashable: a jit static argument)."""

    f: Callable
    tx: optax.GradientTransformation
    grad: str
    steps: int
    record_every: int
    record_params: bool
    eval_fn: Callable | None
    n: int  # samples in the data set; 0 for minimize-style
    batch_size: int
    epochs: int
    mesh: jax.sharding.Mesh


class _Outcome(NamedTuple):
    params: PyTree
    loss: jax.Array
    best_loss: jax.Array
    grad_norm: jax.Array
    status: jax.Array
    steps: jax.Array
    diverged_at: jax.Array
    history: engine.History


def _run_one(
    varying: PyTree, shared: PyTree, static: _Static, axis_name: str | None = None
) -> _Outcome:
    """One config: exactly what ``minimize`` (or ``fit``) runs, with its values as arrays.

    ``axis_name`` names the ``vmap`` axis over a device's configs (see :func:`gdjax.engine.run`).
    """
    x0 = varying.get("x0", shared["x0"])
    state = optimizers.set_hyperparameters(
        static.tx.init(x0), {**shared["hyper"], **varying["hyper"]}
    )
    if static.n:
        indices = None
        if static.batch_size < static.n:
            # batch_schedule's rows, cut from the config seed's per-epoch sample orders
            orders = shared["orders"][varying.get("seed_index", shared["seed_index"])]
            per_epoch = static.n // static.batch_size
            indices = orders[:, : per_epoch * static.batch_size].reshape(-1, static.batch_size)
        source, aux = batching.batch_source(static.f), (shared["data"], indices)
    else:
        source, aux = descent.gradient_source(static.f, static.grad), None
    run = engine.run(
        source, static.tx, x0, steps=static.steps, aux=aux, opt_state=state,
        record_every=static.record_every, gtol=shared["tol"], ftol=shared["ftol"],
        record_params=static.record_params, record_fn=static.eval_fn, axis_name=axis_name,
    )
    loss = static.f(run.params, shared["data"]) if static.n else run.loss
    return _Outcome(
        run.params, loss, run.best_loss, run.grad_norm, run.status, run.steps, run.diverged_at,
        run.history,
    )


def _run_chunk(varying: PyTree, shared: PyTree, static: _Static) -> _Packed:
    """``vmap`` of :func:`_run_one` over a chunk, its config axis sharded over the mesh.

    The outcome stays on the devices until :func:`_fetch` brings it to the host.
    """
    # static by position: jit's dispatch of a keyword static costs ~0.1 ms a call
    return _Packed(_run_packed(varying, shared, static), static)


class _Packed(NamedTuple):
    """A chunk's outcome as few device arrays (each costs a transfer), with its static info."""

    arrays: tuple
    static: _Static


def _pack(out: _Outcome) -> tuple:
    h = out.history
    return (
        out.params,
        jnp.stack([out.loss, out.best_loss, out.grad_norm], axis=-1),
        jnp.stack([out.status, out.steps, out.diverged_at], axis=-1),
        jnp.stack([h.loss, h.grad_norm], axis=-1),
        h.params,
        h.metrics,
    )


def _unpack(packed: tuple, static: _Static) -> _Outcome:
    """Host arrays of :func:`_pack` back into an :class:`_Outcome`."""
    params, floats, ints, curves, h_params, h_metrics = packed
    steps = engine.record_steps(static.steps, static.record_every)
    history = engine.History(
        np.repeat(steps[None], len(floats), axis=0), curves[..., 0], curves[..., 1],
        h_params, h_metrics,
    )
    return _Outcome(params, floats[:, 0], floats[:, 1], floats[:, 2], ints[:, 0], ints[:, 1],
                    ints[:, 2], history)


@functools.partial(jax.jit, static_argnums=2)
def _run_packed(varying: PyTree, shared: PyTree, static: _Static) -> tuple:
    per_device = jax.vmap(
        lambda v, s: _pack(_run_one(v, s, static=static, axis_name=CONFIGS)), in_axes=(0, None),
        axis_name=CONFIGS,
    )
    return jax.shard_map(
        per_device, mesh=static.mesh, in_specs=(P(AXIS), P()), out_specs=P(AXIS),
        check_vma=False,
    )(varying, shared)


@functools.lru_cache(maxsize=8)
def _mesh(devices: tuple[jax.Device, ...]) -> jax.sharding.Mesh:
    return jax.make_mesh(
        (len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def _put(tree: PyTree, sharding: NamedSharding) -> PyTree:
    """Host arrays -> global arrays; each process fills only the shards it holds."""

    if jax.process_count() == 1:
        if sharding.num_devices == 1:
            # jit's own dispatch moves host arrays to its one device for less than device_put
            return tree
        return jax.device_put(tree, sharding)  # one call for the whole tree

    def put(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(put, tree)


def _fetch(part: _Packed) -> _Outcome:
    """A chunk's global arrays -> host NumPy arrays, whole on every process."""
    if jax.process_count() > 1:
        arrays = multihost_utils.process_allgather(part.arrays, tiled=True)
    else:
        arrays = jax.device_get(part.arrays)
    return _unpack(arrays, part.static)


# --- chunks, progress, checkpoints ----------------------------------------------------------------


class _Shapes(NamedTuple):
    """One config's program, abstractly: its outcome's structure and a rough memory estimate."""

    treedef: Any
    out_bytes: int  # final parameters, history
    work_bytes: int  # what each step touches (see ``_shapes_cached``)


def _shapes(static: _Static, varying: PyTree, shared: PyTree) -> _Shapes:
    """:class:`_Shapes` of the program ``static`` on arguments like these (traced once per
    program and argument shapes; a repeated sweep only builds the key)."""
    v_leaves, v_def = jax.tree.flatten(varying)
    s_leaves, s_def = jax.tree.flatten(shared)
    return _shapes_cached(
        static, v_def, s_def,
        tuple((np.shape(a)[1:], np.dtype(a.dtype)) for a in v_leaves),
        tuple((np.shape(a), np.dtype(a.dtype)) for a in s_leaves),
    )


@functools.lru_cache(maxsize=64)
def _shapes_cached(static: _Static, v_def: Any, s_def: Any, v_avals: tuple,
                   s_avals: tuple) -> _Shapes:
    """Working set: four copies of the parameters (current, candidate, gradient, update) and two
    of the optimiser state, and for ``fit``-style sweeps its batch indices and two copies of a
    gathered batch."""
    one = jax.tree.unflatten(v_def, [jax.ShapeDtypeStruct(s, d) for s, d in v_avals])
    shared = jax.tree.unflatten(s_def, [jax.ShapeDtypeStruct(s, d) for s, d in s_avals])
    outcome = jax.eval_shape(functools.partial(_run_one, static=static), one, shared)
    x0 = one.get("x0", shared["x0"])
    work = 4 * _nbytes(x0) + 2 * _nbytes(jax.eval_shape(static.tx.init, x0))
    if static.n:
        sample = sum(math.prod(a.shape[1:]) * np.dtype(a.dtype).itemsize
                     for a in jax.tree.leaves(shared["data"]))
        work += 4 * static.steps * static.batch_size + 2 * static.batch_size * sample
    return _Shapes(jax.tree.structure(outcome), _nbytes(outcome), work)


def _nbytes(tree: PyTree) -> int:
    return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree))


def _run_groups(
    groups: list[tuple[_Static, np.ndarray]],
    varying: PyTree,
    shared: PyTree,
    *,
    chunk_size: int | None,
    memory_budget: int,
    progress: bool | None,
    checkpoint: str | os.PathLike | None,
    describe: Mapping[str, Any],
) -> _Outcome:
    """Run every group (one per batch size) in chunks; outcomes gathered in config order."""
    mesh = groups[0][0].mesh
    devices = mesh.size
    plans = []
    treedefs = []
    for static, idx in groups:
        shapes = _shapes(static, varying, shared)
        treedefs.append(shapes.treedef)
        if chunk_size is None:
            out, work = shapes.out_bytes, shapes.work_bytes
            per_device = min(memory_budget // (out + work), CACHE_BYTES // work)
        else:
            per_device = -(-chunk_size // devices)
        size = _per_device(min(per_device, -(-len(idx) // devices))) * devices
        chunks = -(-len(idx) // size)
        # as many chunks, evened out: the last one is not mostly padding
        size = _per_device(-(-len(idx) // (chunks * devices))) * devices
        plans.append((static, idx, size, chunks))
    store = None
    if checkpoint is not None:
        store = _Checkpoint(
            checkpoint, _fingerprint(plans, varying, shared, describe),
            [f"g{g}-c{k}" for g, (*_, chunks) in enumerate(plans) for k in range(chunks)],
        )
    total = sum(chunks for *_, chunks in plans)
    show = (total > 1 if progress is None else bool(progress)) and jax.process_index() == 0
    shared_on_devices = _put(shared, NamedSharding(mesh, P()))
    by_config = NamedSharding(mesh, P(AXIS))
    results = []
    with _progress_bar(show, total) as advance:
        for g, (static, idx, size, chunks) in enumerate(plans):
            results.append(_run_group(
                g, static, treedefs[g], idx, size, chunks, varying, shared_on_devices, by_config,
                store, advance,
            ))
    if len(results) == 1:
        return results[0]
    return _gather_groups(results, [idx for _, idx in groups])


def _run_group(
    g: int,
    static: _Static,
    treedef: Any,
    idx: np.ndarray,
    size: int,
    chunks: int,
    varying: PyTree,
    shared_on_devices: PyTree,
    by_config: NamedSharding,
    store: _Checkpoint | None,
    advance: Callable[[], None],
) -> _Outcome:
    """The chunks of one group; each is dispatched before the previous one is collected."""
    out = None

    def finish(k, part, computed):
        """Chunk ``k`` to the host (waiting for it), to disk, into ``out``."""
        nonlocal out
        lo, hi = k * size, min((k + 1) * size, len(idx))
        if computed:
            part = jax.tree.map(lambda a: a[: hi - lo], _fetch(part))
            if store is not None:
                store.save(f"g{g}-c{k}", part)
        if chunks == 1:
            out = part  # the whole group: nothing to assemble
        else:
            if out is None:
                out = jax.tree.map(lambda a: np.empty((idx.size, *a.shape[1:]), a.dtype), part)
            jax.tree.map(lambda o, a: o.__setitem__(slice(lo, hi), a), out, part)
        advance()

    pending = None
    for k in range(chunks):
        part = None if store is None else store.load(f"g{g}-c{k}", treedef)
        computed = part is None
        if computed:
            lo, hi = k * size, min((k + 1) * size, len(idx))
            if chunks == 1 and size == len(idx) == _count_of(varying):
                chunk = _put(varying, by_config)  # the whole grid, unpadded: no copy
            else:
                take = idx[np.minimum(np.arange(lo, lo + size), hi - 1)]  # pad: repeat the last
                chunk = _put(jax.tree.map(lambda a, take=take: a[take], varying), by_config)
            part = _run_chunk(chunk, shared_on_devices, static=static)
        if pending is not None:
            finish(*pending)
        pending = (k, part, computed)
    finish(*pending)
    return out


def _count_of(varying: PyTree) -> int | None:
    leaves = jax.tree.leaves(varying)
    return len(leaves[0]) if leaves else None


def _per_device(size: int) -> int:
    """Configs per device: a multiple of 8, at least 16.

    XLA fuses tiny batches differently (a batch of one compiles like an unbatched run, a batch of
    two differently again), and another fusion can round differently in the last bit. From 16 on,
    in multiples of 8, the program is the same up to the loop bounds, so a config's result does
    not depend on the device count or the chunk it lands in (tested on 1, 2, 4 and 8 devices).
    """
    return max(16, -(-size // 8) * 8)


def _gather_groups(results: list[_Outcome], indices: list[np.ndarray]) -> _Outcome:
    """Groups back in config order; shorter histories padded with their final record."""
    records = max(r.history.step.shape[1] for r in results)

    def pad(r):
        history = jax.tree.map(
            lambda a: np.pad(a, [(0, 0), (0, records - a.shape[1])] + [(0, 0)] * (a.ndim - 2),
                             mode="edge"),
            r.history,
        )
        return r._replace(history=history)

    results = [pad(r) for r in results]
    count = sum(len(i) for i in indices)
    out = jax.tree.map(lambda a: np.empty((count, *a.shape[1:]), a.dtype), results[0])
    for r, idx in zip(results, indices, strict=True):
        jax.tree.map(lambda o, a, idx=idx: o.__setitem__(idx, a), out, r)
    return out


class _progress_bar:
    """A rich progress bar over chunks on stderr (a no-op when hidden); the callable ticks one.

    On stderr, so that a program printing results (``gdjax sweep --json``) keeps stdout clean.
    """

    def __init__(self, show: bool, total: int):
        self.bar = None
        if show:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                TextColumn("{task.completed}/{task.total} chunks"), TimeElapsedColumn(),
                TimeRemainingColumn(), console=Console(stderr=True),
            )
            self.task = self.bar.add_task("sweep", total=total)

    def __enter__(self) -> Callable[[], None]:
        if self.bar is None:
            return lambda: None
        self.bar.start()
        return lambda: self.bar.advance(self.task)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()


class _Checkpoint:
    """A directory of finished chunks (``<chunk>.npz``) and ``manifest.json`` (the fingerprint)."""

    def __init__(self, directory: str | os.PathLike, fingerprint: str, chunks: list[str]):
        self.directory = os.fspath(directory)
        manifest = os.path.join(self.directory, "manifest.json")
        if os.path.exists(manifest):
            with open(manifest) as fh:
                found = json.load(fh).get("fingerprint")
            if found != fingerprint:
                raise ValueError(
                    f"checkpoint={self.directory!r} holds a different sweep (fingerprint {found} "
                    f"!= {fingerprint}: another grid, function, optimiser, data or chunking); "
                    "use a new directory or delete this one"
                )
        elif jax.process_index() == 0:
            os.makedirs(self.directory, exist_ok=True)
            _write_atomic(
                manifest,
                lambda fh: fh.write(json.dumps({"fingerprint": fingerprint, "chunks": chunks},
                                               indent=1).encode()),
            )

    def load(self, name: str, treedef: Any) -> PyTree | None:
        """The chunk's outcome if it finished earlier, else ``None``."""
        path = os.path.join(self.directory, name + ".npz")
        if not os.path.exists(path):
            return None
        with np.load(path) as z:
            return jax.tree.unflatten(treedef, [z[f"leaf{i}"] for i in range(len(z.files))])

    def save(self, name: str, tree: PyTree) -> None:
        if jax.process_index() != 0:
            return
        leaves = jax.tree.leaves(tree)
        _write_atomic(
            os.path.join(self.directory, name + ".npz"),
            lambda fh: np.savez(fh, **{f"leaf{i}": a for i, a in enumerate(leaves)}),
        )


def _write_atomic(path: str, write: Callable[[Any], None]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        write(fh)
    os.replace(tmp, path)


def _describe(f: Callable, optimizer: Any, eval_fn: Callable | None) -> dict[str, Any]:
    """Names of the callables (their code cannot be fingerprinted; their names can)."""

    def name(obj):
        if obj is None or isinstance(obj, str):
            return obj
        qualname = getattr(obj, "__qualname__", type(obj).__name__)
        return f"{getattr(obj, '__module__', '')}.{qualname}"

    return {"f": name(f), "optimizer": name(optimizer), "eval_fn": name(eval_fn)}


def _fingerprint(plans: list, varying: PyTree, shared: PyTree, describe: Mapping[str, Any]) -> str:
    """sha256 of everything that decides the results and the chunking."""
    h = hashlib.sha256()
    settings = [
        {k: v for k, v in s._asdict().items() if k not in ("f", "tx", "eval_fn", "mesh")}
        | {"chunk": size, "configs": len(idx)}
        for s, idx, size, _ in plans
    ]
    h.update(json.dumps({"describe": describe, "groups": settings}, sort_keys=True).encode())
    for tree in (varying, shared):
        h.update(str(jax.tree.structure(tree)).encode())
        for leaf in jax.tree.leaves(tree):
            a = np.ascontiguousarray(leaf)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
    for _, idx, *_ in plans:
        h.update(np.asarray(idx, np.int64).tobytes())
    return h.hexdigest()[:16]
