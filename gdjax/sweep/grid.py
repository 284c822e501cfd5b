"""Grids of configs for :func:`gdjax.sweep`: axes listed, crossed, zipped or drawn at random.

``grid`` maps axis names to values. The names are the hyperparameters of the optimiser
(``learning_rate``, ``momentum``, ``b1``...), ``x0`` (starting points, one per leading index:
see :func:`starts_grid`), ``seed`` and, for ``fit``-style sweeps, ``batch_size``. Values are
listed explicitly (a list or 1-D array), and the configs are their Cartesian product, first axis
slowest (``zip_axes`` pairs axes up instead). An axis may also be *drawn at random*:
:class:`Uniform` or :class:`LogUniform` (for a start, ``Uniform(low, high)`` is a box). A random
axis is a function of the config's ``seed``: each config draws its value from
``jax.random.key(seed)``, so ``samples=N`` (shorthand for a ``seed`` axis ``0..N-1``) gives ``N``
random points, and a config run again with the same seed draws the same value.

Everything here runs on the host, in NumPy, before any compilation.
"""

from __future__ import annotations

import numbers
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gdjax import batching, inputs, optimizers

PyTree = Any

SPECIAL = ("x0", "seed", "batch_size")
"""The axes that are not optimiser hyperparameters."""


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




def expand(
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
                batch_size(int(b), n)
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


def count(axes: Mapping[str, Any]) -> int:
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


def batch_size(b: Any, n: int | None) -> int:
    if n is None:
        raise ValueError(f"batch_size is for fit-style sweeps (with data), got batch_size={b!r}")
    b = inputs.positive_int("batch_size", b)
    if b > n:
        raise ValueError(f"batch_size must be at most the number of samples ({n}), got "
                         f"batch_size={b}")
    return b


def orders(seeds: np.ndarray, n: int, epochs: int) -> np.ndarray:
    """Each seed's sample order per epoch, ``(len(seeds), epochs, n)``, as ``fit`` draws them.

    ``batching.epoch_orders`` per seed; a batch size ``b`` keeps the first ``(n // b) * b`` of
    each, in rows of ``b`` (as ``batch_schedule`` does). Drawn once here on the host, like
    ``fit``, rather than inside every compiled program: one table serves all batch sizes.
    """
    return np.stack([batching.epoch_orders(int(s), n, epochs) for s in seeds])


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


