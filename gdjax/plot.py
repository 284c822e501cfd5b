"""Pictures of descent runs and sweeps (matplotlib, an optional extra: ``pip install gdjax[plot]``).

Every function builds a :class:`matplotlib.figure.Figure` directly, without ``pyplot``: nothing
opens a window, no global figure state accumulates in a loop, and it works on a headless machine
(the figure renders with matplotlib's Agg canvas). Each returns the figure, and saves it first when
``path`` is given (the format follows the suffix: ``.png``, ``.svg``, ``.pdf``). In a notebook the
returned figure displays itself.

* :func:`trajectories`: several optimisers' paths over a contour plot of a 2-D function.
* :func:`loss_curves`: the loss histories of a sweep, coloured by a hyperparameter.
* :func:`loss_vs_learning_rate`: final loss against learning rate, diverged runs marked, with an
  optional theoretical boundary such as ``2/L``.
* :func:`basin_map`: which minimiser each start of a starting-point sweep reaches.

Example:
    >>> import numpy as np
    >>> from gdjax import functions, plot
    >>> path = np.array([[-1.2, 1.0], [-0.5, 0.3], [0.5, 0.2], [1.0, 1.0]])
    >>> fig = plot.trajectories(functions.rosenbrock, {"a path": path})
    >>> fig.axes[0].get_title()
    'rosenbrock'
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from gdjax.results import StatusArray

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["basin_map", "loss_curves", "loss_vs_learning_rate", "trajectories"]

# Colours of the optimisers and the basins (matplotlib's tab10, readable on white).
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f",
)
_STATUS_STYLE = {  # marker, colour, legend label
    "converged": ("o", "#2ca02c", "converged"),
    "max_steps": ("s", "#1f77b4", "max steps reached"),
    "diverged": ("x", "#d62728", "diverged"),
}


def trajectories(
    f: Callable[[jax.Array], jax.Array],
    paths: Mapping[str, Any],
    *,
    domain: Sequence[Sequence[float]] | None = None,
    minimizers: Any = None,
    log_levels: bool | None = None,
    levels: int = 30,
    steps: Any = None,
    title: str | None = None,
    path: str | os.PathLike | None = None,
    dpi: int = 100,
) -> Figure:
    """The classic optimiser comparison: paths drawn over the contour plot of ``f``.

    With ``steps``, a second panel draws ``f`` along each path against the step: where the
    contour plot shows which way each optimiser went, the second shows how fast it got there.

    Args:
      f: a scalar function of a 2-vector (e.g. :data:`gdjax.functions.rosenbrock`).
      paths: label -> ``(T, 2)`` array of iterates (``result.history.params`` of
        ``minimize(..., record_params=True)``), drawn in order with a dot at the start and a
        triangle at the end.
      domain: ``((x_lo, x_hi), (y_lo, y_hi))``; ``f.domain`` when ``f`` has one, else a box
        around the paths.
      minimizers: ``(k, 2)`` known minimisers, marked with stars; ``f.minimizers`` by default.
      log_levels: log-spaced contour levels (right for Rosenbrock-like valleys, whose values
        span many decades); chosen automatically when ``None``.
      levels: number of contour levels.
      steps: ``(T,)`` the step of each point of the paths (``result.history.step``), shared by
        every path; adds the panel of ``f`` along the paths.
      title: the title; ``f.name`` by default.
      path: where to save the figure (``.png``, ``.svg``, ...), or ``None``.
      dpi: resolution of a saved raster image.

    Returns:
      The figure.

    Raises:
      ValueError: if a path is not a ``(T, 2)`` array, ``domain`` is not two ``(lo, hi)`` pairs,
        or ``steps`` does not have one entry per point of every path.
    """
    Figure, colors = _matplotlib("Figure", "colors")
    curves = {label: _as_path(label, p) for label, p in paths.items()}
    if steps is not None:
        steps = np.asarray(steps).reshape(-1)
        lengths = {label: len(xy) for label, xy in curves.items()}
        if any(n != steps.size for n in lengths.values()):
            raise ValueError(f"steps has {steps.size} entries but the paths have {lengths} points")
    box = _domain(f, domain, curves.values())
    if minimizers is None:
        minimizers = getattr(f, "minimizers", np.zeros((0, 2)))
    minimizers = np.asarray(minimizers, dtype=float).reshape(-1, 2)

    if steps is None:
        fig = Figure(figsize=(7.0, 5.6), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = Figure(figsize=(12.0, 5.2), layout="constrained")
        ax, by_step = fig.subplots(1, 2, width_ratios=(1.25, 1.0))
    xs, ys, zs = _grid_values(f, box, 300)
    if log_levels is None:
        log_levels = _spans_decades(zs)
    if log_levels:
        lo = max(float(np.min(zs[zs > 0])), float(np.max(zs)) * 1e-9)
        norm = colors.LogNorm(lo, float(np.max(zs)))
        contour_levels = np.geomspace(lo, float(np.max(zs)), levels)
        cs = ax.contourf(xs, ys, np.maximum(zs, lo), levels=contour_levels, norm=norm,
                         cmap="Greys_r", alpha=0.85)
    else:
        cs = ax.contourf(xs, ys, zs, levels=levels, cmap="Greys_r", alpha=0.85)
    ax.contour(xs, ys, np.maximum(zs, cs.levels[0]), levels=cs.levels, colors="white",
               linewidths=0.3, alpha=0.6)
    bar = fig.colorbar(cs, ax=ax, label="f(x)" + (" (log scale)" if log_levels else ""))
    if log_levels:
        bar.set_ticks([t for t in 10.0 ** np.arange(-12, 13) if lo <= t <= np.max(zs)])

    # Shorter paths on top: a slow optimiser's crawl would vanish under a fast one's swings.
    lengths = [np.nansum(np.linalg.norm(np.diff(xy, axis=0), axis=1)) for xy in curves.values()]
    order = np.argsort(np.argsort(lengths))
    for i, (label, xy) in enumerate(curves.items()):
        color, z = _PALETTE[i % len(_PALETTE)], 4.0 - order[i] / len(curves)
        ax.plot(xy[:, 0], xy[:, 1], "-", color=color, lw=1.8, label=label, alpha=0.95, zorder=z)
        ax.plot(xy[-1, 0], xy[-1, 1], "^", color=color, ms=8, mec="black", mew=0.6, zorder=z)
    markers = []
    if curves:
        start = next(iter(curves.values()))[0]
        markers += ax.plot(*start, "o", color="white", mec="black", ms=8, label="start",
                           zorder=5)
    if len(minimizers):
        markers += ax.plot(minimizers[:, 0], minimizers[:, 1], "*", color="gold", mec="black",
                           ms=15, label="known minimiser" + ("s" if len(minimizers) > 1 else ""),
                           zorder=5)

    title = getattr(f, "name", "f") if title is None else title
    ax.set(xlim=box[0], ylim=box[1], xlabel="$x_1$", ylabel="$x_2$")
    if steps is None:
        ax.set_title(title)
        ax.legend(loc="best", fontsize="small", framealpha=0.9)
        return _finish(fig, path, dpi)

    fig.suptitle(title)
    ax.legend(handles=markers, loc="best", fontsize="small", framealpha=0.9)
    log_y, values = _log_floor(np.stack([_values_along(f, xy) for xy in curves.values()]))
    for i, (label, v) in enumerate(zip(curves, values, strict=True)):
        by_step.plot(steps, v, color=_PALETTE[i % len(_PALETTE)], lw=1.5, label=label)
    if log_y:
        by_step.set_yscale("log")
    by_step.set(xlabel="step", ylabel="f(x)")
    by_step.grid(True, alpha=0.3)
    by_step.legend(loc="best", fontsize="small")
    return _finish(fig, path, dpi)


def loss_curves(
    steps: Any,
    losses: Any,
    values: Any,
    *,
    label: str = "learning rate",
    log_color: bool = True,
    status: Any = None,
    minimum: float | None = None,
    xlabel: str = "step",
    ylabel: str | None = None,
    title: str | None = None,
    ax: Axes | None = None,
    path: str | os.PathLike | None = None,
    dpi: int = 100,
) -> Figure:
    """Loss histories of a sweep, one line per config, coloured by a hyperparameter.

    Args:
      steps: ``(R,)`` step (or epoch) of each record, shared by every config, or ``(C, R)``.
      losses: ``(C, R)`` loss history of each of ``C`` configs (``sweep_result.history.loss``).
      values: ``(C,)`` the hyperparameter each line is coloured by (e.g. its learning rate),
        shown on a colour bar.
      label: name of that hyperparameter, for the colour bar.
      log_color: colour on a log scale (learning rates, batch sizes).
      status: ``(C,)`` status strings; a diverged config's line is dashed, and a cross marks
        where it leaves the top of the plot (set a little above every other line).
      minimum: the known minimum value ``f*``; when given, ``f - f*`` is drawn.
      xlabel: label of the x axis.
      ylabel: label of the y axis; ``"loss"`` (or ``"f(x) - f*"``) by default.
      title: the axes title.
      ax: draw into these axes instead of a new figure (the figure is still returned).
      path: where to save the figure, or ``None``.
      dpi: resolution of a saved raster image.

    Returns:
      The figure.

    Raises:
      ValueError: if the shapes of ``steps``, ``losses``, ``values`` and ``status`` disagree.
    """
    colors, cm = _matplotlib("colors", "cm")
    losses = np.asarray(losses, dtype=float)
    if losses.ndim != 2:
        raise ValueError(f"losses must have shape (configs, records), got shape {losses.shape}")
    values = np.asarray(values, dtype=float).reshape(-1)
    steps = np.broadcast_to(np.asarray(steps), losses.shape) if np.ndim(steps) <= 2 else None
    if steps is None or values.shape[0] != losses.shape[0]:
        raise ValueError(
            f"steps, values must match losses of shape {losses.shape}, got steps of shape "
            f"{np.shape(steps)} and values of shape {values.shape}"
        )
    status = _status(status, losses.shape[0])
    if minimum is not None:
        losses = losses - minimum
    if log_color and np.any(values <= 0):
        raise ValueError(f"log_color needs positive values, got {label} values {values}")

    fig, ax = _figure_and_axes(ax, (7.0, 4.6))
    norm = (colors.LogNorm if log_color else colors.Normalize)(values.min(), values.max())
    cmap = _matplotlib("colormaps")[0]["viridis"]
    log_y, losses = _log_floor(losses)
    diverged = status == "diverged"
    # A diverged run climbs by tens of decades before it stops; the axis ends a little above the
    # highest loss of the other runs and the start, and a cross marks where each run left it.
    kept = losses[~diverged] if np.any(~diverged) else losses[:, :1]
    ceiling = np.nanmax(np.concatenate([kept[np.isfinite(kept)], losses[:, 0]]))
    top = ceiling * 100.0 if log_y else ceiling + 0.5 * abs(ceiling)
    for i in np.argsort(values):
        color = cmap(norm(values[i]))
        ax.plot(steps[i], losses[i], "--" if diverged[i] else "-", color=color, lw=1.2,
                alpha=0.9)
        if diverged[i]:
            out = np.flatnonzero(~(losses[i] <= top))
            j = out[0] if out.size else losses.shape[1] - 1
            ax.plot(steps[i, j], min(losses[i, j], top), "x", color="#d62728", ms=7, mew=2,
                    clip_on=False, zorder=5)
    if log_y:
        ax.set_yscale("log")
    if np.any(diverged):
        ax.set_ylim(top=top)
    mappable = cm.ScalarMappable(norm=norm, cmap=cmap)
    ax.figure.colorbar(mappable, ax=ax, label=label)
    if np.any(status == "diverged"):
        ax.plot([], [], "x--", color="#d62728", label="diverged (cross: where it left the plot)")
        ax.legend(loc="best", fontsize="small")
    default_ylabel = "loss" if minimum is None else "f(x) - f*"
    ax.set(xlabel=xlabel, ylabel=default_ylabel if ylabel is None else ylabel)
    ax.set_title(f"loss curves by {label}" if title is None else title, pad=10)
    ax.grid(True, which="major", alpha=0.3)
    return _finish(fig, path, dpi)


def loss_vs_learning_rate(
    learning_rates: Any,
    final_loss: Any,
    status: Any = None,
    *,
    minimum: float | None = None,
    boundary: float | None = None,
    boundary_label: str = "2/L",
    title: str | None = None,
    ax: Axes | None = None,
    path: str | os.PathLike | None = None,
    dpi: int = 100,
) -> Figure:
    """Final loss against learning rate: "too small" on the left, "too big" on the right.

    Each config is a point (several per learning rate when the sweep also varies starts or
    seeds); the line follows the median over the configs that did not diverge. Diverged configs
    have no meaningful final loss, so they sit as red crosses on a band above the plot.

    Args:
      learning_rates: ``(C,)`` learning rate of each config.
      final_loss: ``(C,)`` final loss of each config.
      status: ``(C,)`` status strings (``"converged"``, ``"max_steps"``, ``"diverged"``); all
        ``"max_steps"`` when ``None``.
      minimum: the known minimum value ``f*``; when given, ``f - f*`` is drawn.
      boundary: a learning rate drawn as a vertical line, e.g. the stability limit ``2/L`` of
        gradient descent on a quadratic whose Hessian's largest eigenvalue is ``L``.
      boundary_label: the legend label of that line.
      title: the axes title.
      ax: draw into these axes instead of a new figure (the figure is still returned).
      path: where to save the figure, or ``None``.
      dpi: resolution of a saved raster image.

    Returns:
      The figure.

    Raises:
      ValueError: if the arrays' lengths disagree or a learning rate is not positive.
    """
    lrs = np.asarray(learning_rates, dtype=float).reshape(-1)
    loss = np.asarray(final_loss, dtype=float).reshape(-1)
    if lrs.shape != loss.shape:
        raise ValueError(
            f"learning_rates and final_loss must have the same length, got {lrs.size} and "
            f"{loss.size}"
        )
    if np.any(lrs <= 0):
        raise ValueError(f"learning rates must be positive, got learning_rates={lrs}")
    status = _status(status, lrs.size)
    if minimum is not None:
        loss = loss - minimum
    fig, ax = _figure_and_axes(ax, (7.0, 4.6))

    alive = (status != "diverged") & np.isfinite(loss)
    positive = alive & (loss > 0)
    floor = float(loss[positive].min()) if positive.any() else 1e-12
    shown = np.where(alive, np.maximum(loss, floor), np.nan)
    top = float(np.nanmax(shown)) if alive.any() else 1.0
    band = top * 30.0  # where the diverged configs are drawn, above every finite loss

    unique = np.unique(lrs[alive])
    if unique.size:
        medians = [np.median(shown[alive & (lrs == lr)]) for lr in unique]
        ax.plot(unique, medians, "-", color="#444444", lw=1.2, label="median (not diverged)")
    for name in ("converged", "max_steps"):
        marker, color, text = _STATUS_STYLE[name]
        sel = alive & (status == name)
        if sel.any():
            ax.plot(lrs[sel], shown[sel], marker, color=color, ms=4.5, alpha=0.75, ls="none",
                    label=f"{text} ({sel.sum()})")
    gone = ~alive
    if gone.any():
        marker, color, text = _STATUS_STYLE["diverged"]
        ax.plot(lrs[gone], np.full(gone.sum(), band), marker, color=color, ms=6, mew=1.5,
                ls="none", label=f"{text} ({gone.sum()})")
        ax.axhline(band, color=color, lw=0.6, alpha=0.4)
    if boundary is not None:
        ax.axvline(boundary, color="black", ls=":", lw=1.5,
                   label=f"{boundary_label} = {boundary:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ylabel = "final loss" if minimum is None else "final f(x) - f*"
    ax.set(xlabel="learning rate", ylabel=ylabel,
           title="final loss vs learning rate" if title is None else title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _finish(fig, path, dpi)


def basin_map(
    starts: Any,
    final_params: Any,
    status: Any,
    minimizers: Any,
    *,
    f: Callable[[jax.Array], jax.Array] | None = None,
    radius: float = 1e-2,
    title: str | None = None,
    ax: Axes | None = None,
    path: str | os.PathLike | None = None,
    dpi: int = 100,
) -> Figure:
    """Basins of attraction: each start coloured by the minimiser its run ended at.

    A start counts for minimiser ``k`` when its final point lies within ``radius`` of it (and the
    run did not diverge); starts that ended anywhere else are light grey, diverged ones dark grey.
    Starts on a regular grid are drawn as an image, scattered starts as square markers.

    Args:
      starts: ``(C, 2)`` starting point of each config.
      final_params: ``(C, 2)`` final point of each config.
      status: ``(C,)`` status strings.
      minimizers: ``(k, 2)`` known minimisers (``f.minimizers``).
      f: optionally the function, whose contour lines are drawn on top.
      radius: how close to a minimiser a final point must be to count as reaching it.
      title: the axes title.
      ax: draw into these axes instead of a new figure (the figure is still returned).
      path: where to save the figure, or ``None``.
      dpi: resolution of a saved raster image.

    Returns:
      The figure.

    Raises:
      ValueError: if the shapes disagree or ``radius`` is not positive.
    """
    colors, patches = _matplotlib("colors", "patches")
    starts = np.asarray(starts, dtype=float)
    final = np.asarray(final_params, dtype=float)
    minimizers = np.asarray(minimizers, dtype=float).reshape(-1, 2)
    if starts.ndim != 2 or starts.shape[1] != 2 or final.shape != starts.shape:
        raise ValueError(
            f"starts and final_params must both have shape (configs, 2), got {starts.shape} "
            f"and {final.shape}"
        )
    if not radius > 0:
        raise ValueError(f"radius must be positive, got radius={radius!r}")
    status = _status(status, starts.shape[0])
    k = len(minimizers)
    dist = np.linalg.norm(final[:, None, :] - minimizers[None, :, :], axis=-1) if k else None
    basin = np.full(starts.shape[0], k)  # k: ended elsewhere
    if k:
        nearest = np.argmin(dist, axis=1)
        hit = dist[np.arange(len(nearest)), nearest] <= radius
        basin = np.where(hit, nearest, k)
    basin = np.where(status == "diverged", k + 1, basin)

    palette = list(_PALETTE[:k]) + ["#d9d9d9", "#555555"]
    cmap = colors.ListedColormap(palette)
    norm = colors.BoundaryNorm(np.arange(k + 3) - 0.5, k + 2)
    fig, ax = _figure_and_axes(ax, (6.4, 5.6))
    xs, ys = np.unique(starts[:, 0]), np.unique(starts[:, 1])
    if xs.size * ys.size == starts.shape[0] and xs.size > 1 and ys.size > 1:
        image = np.full((ys.size, xs.size), k)
        image[np.searchsorted(ys, starts[:, 1]), np.searchsorted(xs, starts[:, 0])] = basin
        ax.pcolormesh(xs, ys, image, cmap=cmap, norm=norm, shading="nearest")
    else:
        ax.scatter(starts[:, 0], starts[:, 1], c=basin, cmap=cmap, norm=norm, marker="s", s=12)
    if f is not None:
        box = ((starts[:, 0].min(), starts[:, 0].max()), (starts[:, 1].min(), starts[:, 1].max()))
        gx, gy, gz = _grid_values(f, box, 200)
        lv = np.geomspace(max(gz.min(), gz.max() * 1e-4), gz.max(), 12) if _spans_decades(gz) \
            else 12
        ax.contour(gx, gy, gz, levels=lv, colors="black", linewidths=0.5, alpha=0.35)

    handles = []
    for i, m in enumerate(minimizers):
        ax.plot(m[0], m[1], "*", color="white", mec="black", ms=16, zorder=5)
        share = np.mean(basin == i)
        handles.append(patches.Patch(color=palette[i],
                                     label=f"({m[0]:.2f}, {m[1]:.2f}): {_percent(share)}"))
    for j, text in ((k, "other / not converged"), (k + 1, "diverged")):
        share = np.mean(basin == j)
        if share:
            handles.append(patches.Patch(color=palette[j], label=f"{text}: {_percent(share)}"))
    ax.legend(handles=handles, title="reached minimiser", fontsize="small", loc="upper left",
              bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    ax.set(xlabel="start $x_1$", ylabel="start $x_2$", aspect="equal",
           title="basins of attraction" if title is None else title)
    return _finish(fig, path, dpi)


def _percent(share: float) -> str:
    return f"{share:.1%}" if 0 < share < 0.01 else f"{share:.0%}"


def _matplotlib(*names: str) -> list[Any]:
    """The named matplotlib pieces, imported on first use with a clear error when missing."""
    try:
        import matplotlib
        from matplotlib import cm, colors, patches
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "gdjax.plot needs matplotlib; install it with `pip install 'gdjax[plot]'`"
        ) from e
    found = {"Figure": Figure, "colors": colors, "cm": cm, "patches": patches,
             "colormaps": matplotlib.colormaps}
    return [found[n] for n in names]


def _figure_and_axes(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    (Figure,) = _matplotlib("Figure")
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _finish(fig: Figure, path: str | os.PathLike | None, dpi: int) -> Figure:
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return fig


def _as_path(label: str, p: Any) -> np.ndarray:
    xy = np.asarray(p, dtype=float)
    if xy.ndim != 2 or xy.shape[1] != 2 or xy.shape[0] < 1:
        raise ValueError(f"path {label!r} must be a (T, 2) array of points, got shape {xy.shape}")
    return xy


def _domain(f: Any, domain: Any, curves: Any) -> np.ndarray:
    if domain is None:
        domain = getattr(f, "domain", None)
    if domain is None:
        pts = np.concatenate([c[np.all(np.isfinite(c), axis=1)] for c in curves] or [np.zeros(
            (1, 2))])
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        pad = np.maximum(0.15 * (hi - lo), 0.5)
        domain = np.stack([lo - pad, hi + pad], axis=1)
    box = np.asarray(domain, dtype=float)
    if box.shape != (2, 2) or np.any(box[:, 1] <= box[:, 0]):
        raise ValueError(
            f"domain must be ((x_lo, x_hi), (y_lo, y_hi)) with lo < hi, got domain={domain!r}"
        )
    return box


def _grid_values(f: Callable, box: Any, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = np.linspace(box[0][0], box[0][1], n)
    ys = np.linspace(box[1][0], box[1][1], n)
    gx, gy = np.meshgrid(xs, ys)
    points = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=jnp.float32)
    zs = np.asarray(jax.jit(jax.vmap(f))(points), dtype=float).reshape(gx.shape)
    return gx, gy, np.where(np.isfinite(zs), zs, np.nanmax(np.where(np.isfinite(zs), zs, -np.inf)))


def _log_floor(values: np.ndarray) -> tuple[bool, np.ndarray]:
    """Whether ``values`` suit a log axis (none negative, some positive), and ``values`` with
    exact zeros (a converged loss, an underflow) raised to the smallest positive value."""
    finite = values[np.isfinite(values)]
    if not (np.any(finite > 0) and np.all(finite >= 0)):
        return False, values
    return True, np.where(values == 0, np.min(finite[finite > 0]), values)


def _values_along(f: Callable, xy: np.ndarray) -> np.ndarray:
    return np.asarray(jax.vmap(f)(jnp.asarray(xy, dtype=jnp.float32)), dtype=float)


def _spans_decades(z: np.ndarray) -> bool:
    """Log levels suit a non-negative function whose walls rise far above its typical value.

    (Rosenbrock, Beale, Goldstein-Price: max / median > 15 on their domains; quadratics and
    Himmelblau: 3 to 11.)
    """
    return bool(np.min(z) >= 0 and np.max(z) > 15.0 * np.median(z))


def _status(status: Any, n: int) -> np.ndarray:
    if status is None:
        return np.full(n, "max_steps")
    status = np.asarray(StatusArray.of(np.asarray(status).reshape(-1)).names())
    if status.shape[0] != n:
        raise ValueError(f"status must have one entry per config ({n}), got {status.shape[0]}")
    return status
