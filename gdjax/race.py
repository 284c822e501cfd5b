"""An optimiser race: several optimisers from one start, each at its best learning rate.

:func:`race` runs each named optimiser from the same start as one ``jax.vmap`` of
:func:`gdjax.minimize` over a log grid of learning rates (:data:`AUTO_LEARNING_RATES`, 1e-5
to 10, four per decade) and keeps the learning rate whose loss stays lowest over the last tenth
of the run, so the race compares optimisers rather than the luck of one learning rate.
``gdjax race`` and ``examples/optimizer_race.py`` both call it; :func:`gdjax.plot.trajectories`
draws its paths.

Example:
  >>> import numpy as np, gdjax
  >>> from gdjax import functions
  >>> r = gdjax.race(functions.sphere, np.float32([1.0, -2.0]), ["sgd", "adam"],
  ...                learning_rate=0.1, steps=50)
  >>> [row["optimizer"] for row in r.rows], r.paths["sgd"].shape[1]
  (['sgd', 'adam'], 2)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from gdjax import engine, inputs
from gdjax.descent import minimize
from gdjax.engine import Status
from gdjax.optimizers import OPTIMIZERS

RACE_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam")
"""The optimisers the seed names: what :func:`race` runs by default."""

AUTO_LEARNING_RATES = tuple(float(f"{v:.12g}") for v in np.geomspace(1e-5, 10.0, 25))
"""The grid each optimiser's learning rate is tuned on: 1e-5 to 10, 25 log-spaced values."""


class Race(NamedTuple):
    """The outcome of :func:`race`.

    Attributes:
      rows: one dict per optimiser: ``optimizer``, ``learning_rate``, ``loss`` (final),
        ``distance_to_minimizer`` (to the nearest of ``f.minimizers``; ``None`` when ``f`` names
        none), ``status`` (a :class:`gdjax.Status` name) and ``steps``.
      paths: optimiser name -> ``(T, n)`` recorded iterates (the start first).
      steps: ``(T,)`` the step of each recorded iterate.
    """

    rows: list[dict[str, Any]]
    paths: dict[str, np.ndarray]
    steps: np.ndarray


def race(
    f: Callable,
    x0: Any,
    optimizers: Sequence[str] = RACE_OPTIMIZERS,
    *,
    learning_rate: float | Mapping[str, float] | None = None,
    steps: int = 1000,
    learning_rates: Sequence[float] = AUTO_LEARNING_RATES,
    callback: Callable[[str], None] | None = None,
) -> Race:
    """Run each optimiser from ``x0`` on ``f`` and record its path.

    With ``learning_rate=None`` each optimiser runs every value of ``learning_rates`` in one
    compiled sweep and keeps the steadiest: the learning rate whose largest loss over the last
    tenth of its recorded history is smallest, among those that did not diverge (a run bouncing
    around the valley does not win by a lucky last step).

    Args:
      f: the objective ``f(x) -> scalar`` of a 1-D array (2-D for a contour picture).
      x0: the start, a 1-D array.
      optimizers: names from :data:`gdjax.OPTIMIZERS`.
      learning_rate: one learning rate for all, a dict name -> learning rate, or ``None`` to
        tune each on ``learning_rates``.
      steps: updates per optimiser.
      learning_rates: the candidates when tuning (default :data:`AUTO_LEARNING_RATES`,
        1e-5 to 10).
      callback: called with each optimiser's name once it has finished (a progress hook).

    Returns:
      A :class:`Race`.

    Raises:
      ValueError: an unknown optimiser name, a missing or non-positive learning rate, or a
        start that is not a 1-D array.
    """
    names = list(optimizers)
    unknown = [n for n in names if n not in OPTIMIZERS]
    if not names or unknown:
        raise ValueError(f"optimizers must name some of {list(OPTIMIZERS)}, got "
                         f"optimizers={names!r}")
    steps = inputs.positive_int("steps", steps)
    x0 = np.asarray(x0)
    if x0.ndim != 1:
        raise ValueError(f"x0 must be a 1-D array, got shape {x0.shape}")
    if learning_rate is None:
        grids = {n: [inputs.positive_number("learning_rates", v) for v in learning_rates]
                 for n in names}
    elif isinstance(learning_rate, Mapping):
        missing = [n for n in names if n not in learning_rate]
        if missing:
            raise ValueError(f"learning_rate has no value for {missing}")
        grids = {n: [inputs.positive_number("learning_rate", learning_rate[n])] for n in names}
    else:
        grids = {n: [inputs.positive_number("learning_rate", learning_rate)] for n in names}
    minimizers = np.asarray(getattr(f, "minimizers", np.zeros((0, x0.size))))
    rows, paths = [], {}
    record_every = max(1, steps // 250)
    for name in names:
        # one program per optimiser: jax.vmap of minimize over the learning rates (a sweep
        # would add a chunk plan and a replay program per optimiser: twice the compile time)
        lrs = np.asarray(grids[name], x0.dtype if x0.dtype.kind == "f" else np.float32)
        res = engine.jit(jax.vmap(lambda lr, name=name: minimize(
            f, x0, name, learning_rate=lr, steps=steps, record_every=record_every,
            record_params=True)))(lrs)
        res = jax.tree.map(np.asarray, res)
        i = _steadiest(res)
        final = res.params[i]
        distance = (float(np.min(np.linalg.norm(minimizers - final.ravel(), axis=1)))
                    if minimizers.size else None)
        rows.append({
            "optimizer": name, "learning_rate": float(lrs[i]),
            "loss": float(res.loss[i]), "distance_to_minimizer": distance,
            "status": str(Status(int(res.status[i]))), "steps": int(res.steps[i]),
        })
        paths[name] = res.history.params[i].reshape(-1, x0.size)
        if callback is not None:
            callback(name)
    return Race(rows, paths, res.history.step[0])


def _steadiest(res: Any) -> int:
    """The config whose largest loss over the last tenth of its history is smallest, not
    diverged (the first config when all diverged)."""
    tail = res.history.loss[:, -max(1, res.history.loss.shape[1] // 10):]
    # a diverged run records non-finite losses after its divergence: they score +inf
    score = np.max(np.nan_to_num(tail, nan=np.inf), axis=1)
    return int(np.argmin(np.where(res.status == Status.DIVERGED, np.inf, score)))
