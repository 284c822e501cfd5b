"""The result of a sweep: per-config arrays, the grid that produced them, tables and files.

A :class:`SweepResult` holds NumPy arrays with a leading config axis (one entry per config of the
grid, in grid order) and answers the usual questions: which config is best (:meth:`~SweepResult.
best`), how many converged or diverged (:meth:`~SweepResult.counts`), what a config's grid values
were (:meth:`~SweepResult.config`). It prints as a rich table and saves to CSV (one row per config)
and JSON (everything, history included). Both files reload exactly: floats are written with
Python's shortest round-trip ``repr``, so every number read back equals the one written. A file
that is empty, cut short or (CSV) edited after writing is refused with an error that names it.

Example:
  >>> import numpy as np, gdjax.results as R
  >>> res = R.SweepResult(
  ...     grid={"learning_rate": np.array([0.1, 1.5])},
  ...     params=np.array([[1e-6], [3.0]], np.float32),
  ...     loss=np.array([5e-13, 4.5], np.float32),
  ...     best_loss=np.array([5e-13, 0.5], np.float32),
  ...     grad_norm=np.array([1e-6, 3.0], np.float32), status=["converged", "diverged"],
  ...     steps=np.array([40, 12]), diverged_at=np.array([-1, 13]))
  >>> res.counts()
  {'converged': 1, 'max_steps': 0, 'diverged': 1}
  >>> res.best().index, res.config(1), res.status == "diverged"
  (0, {'learning_rate': 1.5}, array([False,  True]))
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import warnings
import zipfile
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from rich.table import Table

from gdjax.engine import History, Result, Status

PyTree = Any

STATUSES = tuple(str(s) for s in Status)
"""The statuses a finished config can have: ``converged``, ``max_steps``, ``diverged``."""

_SCALARS = ("loss", "best_loss", "grad_norm", "status", "steps", "diverged_at")


class StatusArray(np.ndarray):
    """The int8 codes of :class:`gdjax.Status`, one per config, that also compare with names.

    ``res.status == "diverged"`` and ``res.status == gdjax.Status.DIVERGED`` give the same bool
    array (a plain ``ndarray``); :meth:`names` gives the names; ``tolist()`` gives
    :class:`Status` members, which compare equal to their names too.

    Example:
      >>> s = StatusArray.of(["converged", "diverged", "max_steps"])
      >>> s == "diverged", s.names().tolist(), s.tolist() == ["converged", "diverged", "max_steps"]
      (array([False,  True, False]), ['converged', 'diverged', 'max_steps'], True)
    """

    @classmethod
    def of(cls, values: Any) -> StatusArray:
        """Codes from codes, names or :class:`Status` members (checked)."""
        a = np.asarray(values)
        if a.dtype.kind in "US":
            lookup = {str(s): int(s) for s in Status}
            try:
                a = np.vectorize(lambda v: lookup[str(v)], otypes=[np.int8])(a)
            except KeyError as e:
                raise ValueError(
                    f"status must hold the names {list(lookup)}, got {e.args[0]!r}"
                ) from None
        elif a.dtype.kind not in "iu" and a.size:
            raise TypeError(f"status must hold Status codes or names, got dtype {a.dtype}")
        a = a.astype(np.int8)
        bad = a[(a < min(Status)) | (a > max(Status))]
        if bad.size:
            raise ValueError(f"status codes must be in 1-3 (Status), got {int(bad[0])}")
        return a.view(cls)

    def __getitem__(self, key: Any) -> Any:
        out = super().__getitem__(key)
        return Status(int(out)) if np.ndim(out) == 0 else out

    def names(self) -> np.ndarray:
        """The status names as a str array."""
        return np.asarray(STATUSES)[np.asarray(self) - 1]

    def tolist(self) -> Any:
        return [Status(v) for v in np.asarray(self).tolist()] if self.ndim == 1 else \
            np.asarray(self).tolist()

    def __eq__(self, other: Any) -> Any:
        return np.asarray(self) == _code(other)

    def __ne__(self, other: Any) -> Any:
        return np.asarray(self) != _code(other)

    __hash__ = None

    def __repr__(self) -> str:
        return f"StatusArray({self.names().tolist()})"

    def __str__(self) -> str:
        return str(self.names())


def _code(value: Any) -> Any:
    if isinstance(value, str):
        return int(Status.of(value))
    if isinstance(value, StatusArray):
        return np.asarray(value)
    return value
_FORMAT = "gdjax.SweepResult"


class Best(NamedTuple):
    """The best finite config of a sweep (see :meth:`SweepResult.best`).

    Attributes:
      index: its position in the sweep (with ``reduce``, the best config of the best group).
      config: its grid values, ``{axis: value}`` (with ``reduce``, the group's values: the axes
        reduced over are left out).
      loss: its final loss.
      params: its final parameters.
      value: the score it won with: the metric's final value, or the group's reduction.
      configs: the configs that score covers (``(index,)`` without ``reduce``).
    """

    index: int
    config: dict[str, Any]
    loss: float
    params: PyTree
    value: float = math.nan
    configs: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True, eq=False)
class SweepResult:
    """Per-config outcomes of a sweep, all with a leading config axis of length ``len(result)``.

    Attributes:
      grid: axis name -> per-config values: a 1-D array for a hyperparameter, ``seed`` or
        ``batch_size``; for ``x0`` the starts, a pytree like the start with a leading config axis.
        Randomly drawn axes hold the values drawn.
      params: final parameters, a pytree with a leading config axis (the last finite ones for a
        diverged config).
      loss: loss at ``params`` (for ``fit``-style sweeps the mean loss over the whole data).
      best_loss: smallest loss in the history (mini-batch losses for ``fit``-style sweeps).
      grad_norm: gradient norm at ``params``.
      status: a :class:`StatusArray` of :class:`gdjax.Status` codes, which also compares with
        the names ``"converged"``, ``"max_steps"`` and ``"diverged"``.
      steps: updates applied.
      diverged_at: the step whose update produced a non-finite value, or -1.
      history: the decimated :class:`gdjax.engine.History`, every field with a leading config axis
        (``history.step`` is ``(C, R)``; where every config records at the same steps, as in
        any sweep without a ``batch_size`` axis, it is one row stored once, a read-only
        ``np.broadcast_to`` view; configs with different batch sizes record at different
        steps); ``None`` when read back from CSV.
      aux: with ``has_aux=True``, each config's auxiliary output at its final parameters (a
        pytree with a leading config axis); else ``None``. Not written to CSV or JSON.
      state: with ``state=`` (``fit``-style), each config's final untrained state (a pytree with a
        leading config axis); else ``None``. Written to npz, not to CSV or JSON.
    """

    grid: dict[str, Any]
    params: PyTree
    loss: np.ndarray
    best_loss: np.ndarray
    grad_norm: np.ndarray
    status: StatusArray
    steps: np.ndarray
    diverged_at: np.ndarray
    history: History | None = None
    aux: PyTree = None
    state: PyTree = None

    def __post_init__(self) -> None:
        if not isinstance(self.status, StatusArray):
            object.__setattr__(self, "status", StatusArray.of(self.status))

    def __len__(self) -> int:
        return int(np.shape(self.loss)[0])

    def config(self, i: int) -> dict[str, Any]:
        """The grid values of config ``i``: Python scalars, and arrays (a pytree) for ``x0``.

        Raises:
          IndexError: ``i`` is not a config index.
        """
        i = self._index(i)
        out = {}
        for name, values in self.grid.items():
            if name == "x0":
                out[name] = jax.tree.map(lambda a: np.asarray(a[i]), values)
            else:
                out[name] = np.asarray(values)[i].item()
        return out

    def result(self, i: int) -> Result:
        """Config ``i`` as the record :func:`gdjax.minimize` returns (``status`` a
        :class:`gdjax.Status`; ``history`` ``None`` when read back from CSV).

        Raises:
          IndexError: ``i`` is not a config index.
        """
        i = self._index(i)
        take = lambda tree: jax.tree.map(lambda a: np.asarray(a)[i], tree)  # noqa: E731
        return Result(
            params=_config_params(self.params, i), loss=self.loss[i], best_loss=self.best_loss[i],
            grad_norm=self.grad_norm[i], status=self.status[i], steps=self.steps[i],
            diverged_at=self.diverged_at[i],
            history=None if self.history is None else take(self.history),
            aux=None if self.aux is None else take(self.aux),
            state=None if self.state is None else take(self.state),
        )

    def counts(self) -> dict[str, int]:
        """How many configs ended with each status, every status listed (zeros included)."""
        return {s: int(np.count_nonzero(self.status == s)) for s in STATUSES}

    def best(self, metric: str = "loss", mode: str = "min", *, reduce: str | None = None,
             over: Sequence[str] = ("seed", "x0")) -> Best:
        """The best config by a metric, among those that did not diverge.

        Args:
          metric: a name from :meth:`metrics`: ``"loss"`` (the final loss, the default),
            ``"best_loss"``, ``"grad_norm"``, ``"steps"``, or an ``eval_fn`` metric at the final
            parameters, e.g. ``"accuracy"`` (a dict key; nested keys joined with dots).
          mode: ``"min"`` or ``"max"`` (e.g. ``best("accuracy", "max")``).
          reduce: ``None`` ranks single configs; ``"mean"``, ``"median"``, ``"min"`` or
            ``"max"`` ranks groups of configs that differ only in the ``over`` axes (e.g. the
            mean test accuracy over seeds of each learning rate). A diverged config (or a
            non-finite value) counts as the worst possible value in its group.
          over: the grid axes ``reduce`` runs over (those the grid has); by default the seed and
            the random start it draws.

        Returns:
          A :class:`Best`.

        Raises:
          ValueError: an unknown metric, mode or reduction, or no config (group) with a finite
            value that did not diverge.

        Example:
          >>> import numpy as np, gdjax.results as R
          >>> res = R.SweepResult(
          ...     grid={"learning_rate": np.array([0.1, 0.1, 0.2, 0.2]),
          ...           "seed": np.array([0, 1, 0, 1])},
          ...     params=np.zeros((4, 1)), loss=np.array([0.5, 0.1, 0.2, 0.3]),
          ...     best_loss=np.zeros(4), grad_norm=np.zeros(4), status=[2, 2, 2, 2],
          ...     steps=np.full(4, 9), diverged_at=np.full(4, -1))
          >>> res.best().config, res.best(reduce="mean").config
          ({'learning_rate': 0.1, 'seed': 1}, {'learning_rate': 0.2})
        """
        values = self._metric(metric)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got mode={mode!r}")
        sign = 1.0 if mode == "min" else -1.0
        ok = (self.status != "diverged") & np.isfinite(values)
        # scores to minimise: a diverged or non-finite config scores +inf
        score = np.where(ok, sign * np.where(ok, values, 0.0), np.inf)
        if reduce is None:
            if not ok.any():
                what = "final loss" if metric == "loss" else metric
                raise ValueError(f"no config has a finite {what} without diverging "
                                 f"(counts: {self.counts()})")
            i = int(np.argmin(score))
            return self._best(i, self.config(i), float(values[i]), (i,))
        if reduce not in _REDUCTIONS:
            raise ValueError(f"reduce must be None or one of {list(_REDUCTIONS)}, got "
                             f"reduce={reduce!r}")
        by = [a for a in self.grid if a not in over]
        keys, group = self._groups(by)
        with np.errstate(invalid="ignore"):  # inf - inf in a group that all diverged
            scores = np.array([_REDUCTIONS[reduce](score[group == g]) for g in range(len(keys))])
        if not np.isfinite(scores).any():
            raise ValueError(f"no group of configs has a finite {reduce} {metric} over "
                             f"{[a for a in self.grid if a in over]} (a diverged config "
                             f"counts as the worst; counts: {self.counts()})")
        g = int(np.argmin(np.where(np.isfinite(scores), scores, np.inf)))
        members = np.flatnonzero(group == g)
        i = int(members[np.argmin(score[members])])
        config = {a: self.config(i)[a] for a in by}
        return self._best(i, config, float(sign * scores[g]), tuple(members.tolist()))

    def metrics(self) -> dict[str, np.ndarray]:
        """Every per-config number by name: ``loss``, ``best_loss``, ``grad_norm``, ``steps``, and
        each ``eval_fn`` metric at the final parameters (its last record in the history),
        named by its key in ``eval_fn``'s output (nested keys and list indices joined with
        dots; a bare scalar is ``"metric"``).

        These are the names :meth:`best`, :meth:`summary` and :meth:`to_pandas` use.
        """
        out = {name: np.asarray(getattr(self, name))
               for name in ("loss", "best_loss", "grad_norm", "steps")}
        metrics = None if self.history is None else self.history.metrics
        if metrics is not None:
            for path, leaf in jax.tree_util.tree_flatten_with_path(metrics)[0]:
                out[_dotted(path) or "metric"] = np.asarray(leaf)[:, -1]
        return out

    def summary(self, by: Sequence[str], metrics: Sequence[str] | None = None
                ) -> dict[str, np.ndarray]:
        """Each metric's mean, std, min and max over the configs that share the ``by`` axes'
        values (over every other axis: seeds, starts...), counting only configs that did not
        diverge and ended finite; ``configs`` and ``diverged`` count each group.

        Args:
          by: grid axes to group by (not ``x0``), e.g. ``["learning_rate"]`` (or one name,
            ``"learning_rate"``); ``[]`` for one
            group of all configs.
          metrics: names from :meth:`metrics` (default: ``loss`` and every ``eval_fn`` metric).

        Returns:
          Columns, one row per distinct combination of the ``by`` values (sorted): the ``by``
          axes, ``configs``, ``diverged``, then ``"<metric> mean"``, ``"<metric> std"``,
          ``"<metric> min"``, ``"<metric> max"`` (NaN where no config of the group counts).
          ``pandas.DataFrame(result.summary(by=...))`` makes it a table.

        Raises:
          ValueError: an unknown axis or metric, or ``x0`` in ``by``.
        """
        by = [by] if isinstance(by, str) else list(by)  # one axis may be named alone
        for axis in by:
            if axis not in self.grid or axis == "x0":
                raise ValueError(f"by must name grid axes other than x0 ({list(self.grid)}), "
                                 f"got by={by!r}")
        available = self.metrics()
        names = list(metrics) if metrics is not None else ["loss"] + [
            n for n in available if n not in ("loss", "best_loss", "grad_norm", "steps")]
        values = {m: self._metric(m) for m in names}
        keys, group = self._groups(by)
        diverged = np.asarray(self.status == "diverged")
        out: dict[str, Any] = {a: keys[:, j] for j, a in enumerate(by)}
        for a in by:
            out[a] = out[a].astype(np.asarray(self.grid[a]).dtype)
        out["configs"] = np.bincount(group, minlength=len(keys))
        out["diverged"] = np.bincount(group, weights=diverged, minlength=len(keys)).astype(int)
        for m, v in values.items():
            v = np.asarray(v, float)
            ok = ~diverged & np.isfinite(v)
            for stat, fn in (("mean", np.mean), ("std", np.std), ("min", np.min),
                             ("max", np.max)):
                out[f"{m} {stat}"] = np.array([
                    fn(v[(group == g) & ok]) if np.any((group == g) & ok) else np.nan
                    for g in range(len(keys))])
        return out

    def to_pandas(self) -> Any:
        """One row per config as a ``pandas.DataFrame``: ``config``, the grid axes (``x0`` and
        other arrays one column per element, ``x0.0``, ``x0.1``...), ``status`` by name, the
        outcomes, each ``eval_fn`` metric (as in :meth:`metrics`) and the final parameters
        (``params.0``, or ``params.w.0`` for a pytree, keys joined with dots).

        Raises:
          ImportError: pandas is not installed (an optional extra: ``pip install pandas``).
        """
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "SweepResult.to_pandas needs pandas, which gdjax does not install: "
                "pip install pandas (the arrays are in result.grid, result.loss, ... without it)"
            ) from None
        columns: dict[str, Any] = {"config": np.arange(len(self))}
        for name, values in self.grid.items():
            columns.update(_dotted_columns(name, values))
        columns["status"] = self.status.names()
        for name in ("loss", "best_loss", "grad_norm", "steps", "diverged_at"):
            columns[name] = np.asarray(getattr(self, name))
        for name, values in self.metrics().items():
            columns.setdefault(name, values)
        columns.update(_dotted_columns("params", self.params))
        return pd.DataFrame(columns)

    def _metric(self, name: str) -> np.ndarray:
        available = self.metrics()
        if name not in available:
            raise ValueError(f"metric must be one of {list(available)}, got metric={name!r}")
        return np.asarray(available[name], float)

    def _groups(self, axes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The distinct rows of the ``axes`` values (sorted), and each config's row number."""
        if not axes:
            return np.zeros((1, 0)), np.zeros(len(self), int)
        keys = np.stack([np.asarray(self.grid[a], float) for a in axes], axis=1)
        unique, group = np.unique(keys, axis=0, return_inverse=True)
        return unique, group.reshape(-1)

    def _best(self, i: int, config: dict[str, Any], value: float,
              members: tuple[int, ...]) -> Best:
        return Best(index=i, config=config, loss=float(self.loss[i]),
                    params=_config_params(self.params, i),
                    value=value, configs=members)

    def table(self, top: int | None = None) -> Table:
        """A rich table, one row per config: grid values, status, losses, steps.

        Numbers have 4 significant digits (``8.022e-05``: an exponent is never cut), vectors
        are summarised (``[-4.51, 2.03, … (50)]``) and every row is one line. Printed narrower
        than its full width, the table leaves out whole columns, least useful first (diverged
        at, best loss, x0, steps, then grid axes), and names them in its caption, instead of
        squeezing numbers into ``…``.

        Args:
          top: show only the ``top`` configs by final loss (diverged ones last); all configs in
            grid order when ``None``.

        Returns:
          A ``rich.table.Table``; print it with ``rich.print(result.table())``.
        """
        if top is None:
            order = np.arange(len(self))
        else:
            if isinstance(top, bool) or not isinstance(top, int) or top < 1:
                raise ValueError(f"top must be a positive integer or None, got top={top!r}")
            key = np.where(self.status == "diverged", np.inf, self.loss.astype(float))
            order = np.lexsort((np.arange(len(self)), np.nan_to_num(key, nan=np.inf)))[:top]
        title = f"sweep: {len(self)} configs, " + ", ".join(
            f"{n} {s}" for s, n in self.counts().items()
        )
        # (name, priority: the higher, the sooner it is left out of a narrow table)
        columns = [("config", 1)] + [(n, 4 if n == "x0" else 2) for n in self.grid]
        columns += [("status", 1), ("final loss", 0), ("best loss", 5), ("steps", 3),
                    ("diverged at", 6)]
        table = FittedTable(title=title, priorities=[p for _, p in columns])
        for name, _ in columns:
            table.add_column(name, justify="right", no_wrap=True)
        for i in order:
            config = self.config(int(i))
            cells = [str(int(i))] + [format_value(config[name]) for name in self.grid]
            diverged = int(self.diverged_at[i])
            cells += [
                str(Status(int(self.status[i]))),
                _number(self.loss[i]),
                _number(self.best_loss[i]),
                str(int(self.steps[i])),
                "" if diverged < 0 else str(diverged),
            ]
            table.add_row(*cells)
        return table

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items())
        text = f"SweepResult({len(self)} configs: {counts}; axes {list(self.grid)}"
        try:
            best = self.best()
        except ValueError:
            return text + ")"
        return text + f"; best loss={best.loss:.6g} at config {best.index})"

    # --- files ---------------------------------------------------------------------------------

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write one row per config: grid values, outcomes and final parameters.

        The first line is a comment, ``# gdjax.SweepResult {...}``: the format version, the row
        count, the grid axes with their column counts, and a sha256 of the table, so that
        :meth:`from_csv` refuses a file that was cut short or edited. Then the header and the
        rows. Columns: ``config``, the grid axes, ``status`` (by name), ``loss``, ``best_loss``,
        ``grad_norm``, ``steps``, ``diverged_at``, then the parameters. An array-valued leaf of
        ``x0`` or the parameters is spread over one column per element, named
        ``<leaf>:<i>`` (``x0:0``, ``x0:1``, ``params['w']:0:1``...). Any axis name reads back,
        ``steps``, ``x0.scale`` or ``params:0`` included: columns are read by position, not by
        name. Floats are written with ``repr`` of their exact value, so :meth:`from_csv` reads
        back equal numbers (as float64). History is not written: use :meth:`to_json` for
        everything. Pandas reads the table with ``pd.read_csv(path, comment="#")``.

        Raises:
          TypeError: a grid axis holds values other than numbers (use :meth:`to_json`).
        """
        columns: list[tuple[str, np.ndarray]] = [("config", np.arange(len(self)))]
        axes = []
        for name, values in self.grid.items():
            spread = _spread(name, values, tree=name == "x0")
            for column, a in spread:
                if a.dtype.kind not in "biuf":
                    raise TypeError(
                        f"cannot write grid axis {name!r} to CSV: column {column!r} holds "
                        f"{a.dtype} values, not numbers; use to_json"
                    )
            columns += spread
            axes.append([name, len(spread)])
        for name in _SCALARS:
            columns.append((name, self.status.names() if name == "status" else np.asarray(
                getattr(self, name))))
        columns += _spread("params", self.params, tree=True)
        table = [[name for name, _ in columns]]
        table += [list(row) for row in zip(*(_text_column(a) for _, a in columns), strict=True)]
        meta = {"version": _CSV_VERSION, "rows": len(table) - 1, "grid": axes,
                "sha256": _table_digest(table)}
        with open(path, "w", newline="") as fh:
            fh.write(f"{_CSV_MARK} {json.dumps(meta)}\n")
            csv.writer(fh, lineterminator="\n").writerows(table)

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> SweepResult:
        """Read a file written by :meth:`to_csv`.

        Every number equals the one written; floats come back as float64 and integers as int64.
        A pytree of parameters comes back as a dict keyed by leaf path (``"['w']"``); a single
        array keeps its shape. ``history`` is ``None``.

        Raises:
          ValueError: the file (named) is empty, not a gdjax sweep CSV, or was cut short or
            edited after writing (its rows or their sha256 differ from its first line's).
        """
        where = repr(os.fspath(path))
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                first = fh.readline()
                table = list(csv.reader(fh))
        except UnicodeDecodeError as e:
            raise ValueError(f"{where} is not a gdjax sweep CSV (not UTF-8 text: {e})") from None
        if not first:
            raise ValueError(f"{where} is empty: not a gdjax sweep CSV; write it with to_csv")
        try:
            if not first.startswith(_CSV_MARK + " "):
                raise ValueError
            meta = json.loads(first[len(_CSV_MARK):])
            rows, axes, digest = int(meta["rows"]), meta["grid"], meta["sha256"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(
                f"{where} is not a gdjax sweep CSV: its first line is not the "
                f"'{_CSV_MARK} {{...}}' comment that to_csv writes (got {first[:60]!r})"
            ) from None
        if len(table) - 1 != rows or _table_digest(table) != digest:
            got = f"{len(table) - 1} rows" if table else "no header"
            raise ValueError(
                f"{where} was cut short or edited after it was written: it holds {got} "
                f"where its first line says {rows}"
                + ("" if len(table) - 1 != rows else ", and their sha256 differs")
                + "; write it again with to_csv"
            )
        header, body = table[0], table[1:]
        g = 1 + sum(count for _, count in axes)
        if header[:1] != ["config"] or tuple(header[g:g + len(_SCALARS)]) != _SCALARS:
            raise ValueError(f"{where} is not a gdjax sweep CSV (header {header[:8]})")
        cols = [[row[j] for row in body] for j in range(len(header))]
        grid: dict[str, Any] = {}
        at = 1
        for name, count in axes:
            if name == "x0":
                grid[name] = _gather("x0", header[at:at + count], cols[at:at + count], len(body))
            else:
                grid[name] = _parse_column(cols[at])
            at += count
        plain = dict(zip(_SCALARS, cols[g:g + len(_SCALARS)], strict=True))
        p = g + len(_SCALARS)
        return cls(
            grid=grid,
            params=_gather("params", header[p:], cols[p:], len(body)),
            loss=_parse_column(plain["loss"]),
            best_loss=_parse_column(plain["best_loss"]),
            grad_norm=_parse_column(plain["grad_norm"]),
            status=StatusArray.of(np.asarray(plain["status"], dtype=str)),
            steps=_parse_column(plain["steps"]),
            diverged_at=_parse_column(plain["diverged_at"]),
        )

    def to_json(self, path: str | os.PathLike) -> None:
        """Write everything (grid, outcomes, parameters, history) as JSON, exactly.

        Arrays are stored with their dtype and shape; floats as ``repr`` numbers (shortest
        round-trip), non-finite ones as the strings ``"nan"``, ``"inf"``, ``"-inf"`` so the file
        is standard JSON. Pytrees may nest dicts (str keys), lists and tuples of arrays; any
        other registered node (a NamedTuple, flax's ``FrozenDict``, an equinox module) is
        written as its children keyed by name and read back as that dict, with a warning.

        Raises:
          TypeError: a leaf that is not an array or number (a function in a module, say).
        """
        doc = {
            "format": _FORMAT,
            "version": 2,
            "grid": {name: _encode(values) for name, values in self.grid.items()},
            "params": _encode(_arrays_only(self.params, "params", "JSON")),
            **{name: _encode(self.status.names() if name == "status" else getattr(self, name))
               for name in _SCALARS},
            "history": None
            if self.history is None
            else {f: _encode(getattr(self.history, f)) for f in History._fields},
        }
        with open(path, "w") as fh:
            json.dump(doc, fh, allow_nan=False)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> SweepResult:
        """Read a file written by :meth:`to_json`: an equal result, dtypes and structure kept.

        Raises:
          ValueError: the file (named) is empty, not JSON (e.g. cut short), not a gdjax sweep
            file, or holds arrays whose data do not fill their shapes or configs.
        """
        where = repr(os.fspath(path))
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:  # (JSONDecodeError is a ValueError)
            what = "empty" if not text.strip() else f"not readable JSON ({e})"
            raise ValueError(
                f"{where} is {what}: it may have been cut short; write it again with to_json"
            ) from None
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise ValueError(f"{where} is not a gdjax sweep JSON file")
        try:
            history = doc["history"]
            out = cls(
                grid={name: _decode(v) for name, v in doc["grid"].items()},
                params=_decode(doc["params"]),
                **{name: _decode(doc[name]) for name in _SCALARS},
                history=None
                if history is None
                else History(**{f: _decode(v) for f, v in history.items()}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{where} is not a valid gdjax sweep JSON file: "
                             f"{type(e).__name__}: {e}") from None
        fields = {"grid": out.grid, "params": out.params, "history": out.history,
                  **{name: getattr(out, name) for name in _SCALARS}}
        for field, tree in fields.items():
            for leaf in jax.tree.leaves(tree):
                if np.ndim(leaf) == 0 or len(leaf) != len(out):
                    raise ValueError(
                        f"{where} is not a valid gdjax sweep JSON file: {field} holds an "
                        f"array of shape {np.shape(leaf)}, not one entry per config "
                        f"({len(out)})"
                    )
        return out

    def to_npz(self, path: str | os.PathLike, *, history: bool = True) -> None:
        """Write the arrays as one NumPy ``.npz`` file: binary, exact, fast at any size.

        Every array keeps its dtype and shape (statuses as their int8 codes); the pytree
        structure and the field names travel in a small JSON entry of the same file. Read it
        back with :meth:`from_npz` or :func:`load`; with NumPy alone, ``np.load(path)``.

        Args:
          path: the file to write (its name is kept as given).
          history: also write the history (``False``: the final outcomes only, about as many
            times smaller as there are records per config).

        Raises:
          TypeError: a pytree holds another kind of node (e.g. a NamedTuple), or an array
            holds objects.
        """
        arrays: dict[str, np.ndarray] = {}
        put = lambda tree: _npz_encode(tree, arrays)  # noqa: E731
        doc = {
            "format": _FORMAT,
            "version": 1,
            "grid": {name: put(values) for name, values in self.grid.items()},
            "params": put(_arrays_only(self.params, "params", ".npz")),
            **{name: put(np.asarray(getattr(self, name))) for name in _SCALARS},
            "history": None if self.history is None or not history
            else {f: put(getattr(self.history, f)) for f in History._fields},
            "state": None if self.state is None else put(_arrays_only(self.state, "state", ".npz")),
        }
        with open(path, "wb") as fh:
            np.savez(fh, **arrays, **{_NPZ_MARK: np.asarray(json.dumps(doc))})

    @classmethod
    def from_npz(cls, path: str | os.PathLike) -> SweepResult:
        """Read a file written by :meth:`to_npz`: an equal result, dtypes and structure kept.

        Raises:
          ValueError: the file (named) is not a NumPy ``.npz`` file written by :meth:`to_npz`
            (e.g. empty or cut short).
        """
        where = repr(os.fspath(path))
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {name: z[name] for name in z.files}
            doc = json.loads(str(arrays.pop(_NPZ_MARK)))
            if doc.get("format") != _FORMAT:
                raise ValueError("its format entry is not " + _FORMAT)
            get = lambda d: _npz_decode(d, arrays)  # noqa: E731
            history = doc["history"]
            return cls(
                grid={name: get(v) for name, v in doc["grid"].items()},
                params=get(doc["params"]),
                **{name: get(doc[name]) for name in _SCALARS},
                history=None if history is None
                else History(**{f: get(v) for f, v in history.items()}),
                state=None if doc.get("state") is None else get(doc["state"]),
            )
        except (OSError, EOFError, KeyError, ValueError, TypeError, AttributeError,
                zipfile.BadZipFile) as e:
            raise ValueError(f"{where} is not a gdjax sweep .npz file (written by to_npz): "
                             f"{type(e).__name__}: {e}") from None

    def _index(self, i: int) -> int:
        n = len(self)
        if isinstance(i, bool) or not isinstance(i, int | np.integer) or not -n <= i < n:
            raise IndexError(f"config index must be an integer in [-{n}, {n}), got i={i!r}")
        return int(i) % n


def load(path: str | os.PathLike) -> SweepResult:
    """Read a :class:`SweepResult` from a ``.npz``, ``.json`` or ``.csv`` file (by its extension).

    Raises:
      ValueError: the extension is none of ``.npz``, ``.json``, ``.csv``, or the file (named) is
        empty, cut short, edited (CSV) or not a gdjax sweep file.
    """
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext == ".npz":
        return SweepResult.from_npz(path)
    if ext == ".json":
        return SweepResult.from_json(path)
    if ext == ".csv":
        return SweepResult.from_csv(path)
    raise ValueError(f"path must end in .json or .csv, got path={os.fspath(path)!r} (or in "
                     ".npz, the binary format of to_npz)")


# --- CSV helpers --------------------------------------------------------------------------------

_CSV_MARK = "# gdjax.SweepResult"
_CSV_VERSION = 3

_LEAF = re.compile(r"^(?P<leaf>.*?)(?P<index>(:\d+)*)$")  # the leaf path, then ":i:j"


def _spread(name: str, values: PyTree, tree: bool) -> list[tuple[str, np.ndarray]]:
    """``(name, values)`` for a 1-D array, or with ``tree`` one column per element of each
    leaf of a pytree with a leading config axis, named ``name<leaf path>:<i>:<j>...``."""
    if not tree:
        return [(name, np.asarray(values))]
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(values)[0]:
        if not _per_config(leaf):
            continue
        leaf = np.asarray(leaf)
        prefix = name + jax.tree_util.keystr(path)
        for index in np.ndindex(leaf.shape[1:]):
            out.append((prefix + "".join(f":{k}" for k in index), leaf[(slice(None), *index)]))
    return out


def _table_digest(table: list[list[str]]) -> str:
    h = hashlib.sha256()
    for row in table:
        h.update(json.dumps(row).encode() + b"\n")
    return h.hexdigest()


def _gather(base: str, names: list[str], cols: list[list[str]], n: int) -> PyTree:
    """Columns back into arrays: one array for a bare leaf, else a dict keyed by leaf path."""
    leaves: dict[str, list[tuple[tuple[int, ...], list[str]]]] = {}
    for name, col in zip(names, cols, strict=True):
        m = _LEAF.match(name[len(base):])
        index = tuple(int(k) for k in m["index"].split(":")[1:])
        leaves.setdefault(m["leaf"], []).append((index, col))
    arrays = {}
    for leaf, parts in leaves.items():
        shape = tuple(max(idx[d] for idx, _ in parts) + 1 for d in range(len(parts[0][0])))
        first = _parse_column(parts[0][1])
        out = np.empty((n, *shape), dtype=first.dtype)
        for idx, col in parts:
            out[(slice(None), *idx)] = _parse_column(col)
        arrays[leaf] = out
    if list(arrays) == [""]:
        return arrays[""]
    return arrays or None


def _text_column(values: np.ndarray) -> list[str]:
    if values.dtype.kind == "f":
        return [repr(float(v)) for v in values]
    if values.dtype.kind in "iub":
        return [str(int(v)) for v in values]
    return [str(v) for v in values]


def _parse_column(col: list[str]) -> np.ndarray:
    try:
        return np.asarray([int(v) for v in col], dtype=np.int64)
    except ValueError:
        return np.asarray([float(v) for v in col], dtype=np.float64)


def _number(value: Any) -> str:
    """4 significant digits, whole: ``8.022e-05``, ``0.001``, ``1.235e+06``, ``nan``."""
    return f"{float(value):.4g}"


def _vector(a: np.ndarray) -> str:
    """Up to 3 numbers in full (3 significant digits), else the first 2 and the count."""
    flat = np.asarray(a, float).ravel()
    shown = [f"{v:.3g}" for v in (flat if flat.size <= 3 else flat[:2])]
    return "[" + ", ".join(shown + ([] if flat.size <= 3 else [f"… ({flat.size})"])) + "]"


def format_value(value: Any) -> str:
    """A grid value or parameters as one short table cell: 4 significant digits for a number,
    ``[-4.51, 2.03, … (50)]`` for an array of more than 3 numbers.

    Example:
      >>> format_value(8.022315e-05), format_value(np.arange(50.0) - 4.512)
      ('8.022e-05', '[-4.51, -3.51, … (50)]')
    """
    if isinstance(value, bool | int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return _number(value)
    if isinstance(value, np.ndarray):
        return _vector(value)
    return "(" + ", ".join(format_value(v) for v in jax.tree.leaves(value)) + ")"


class FittedTable(Table):
    """A ``rich.table.Table`` that, rendered narrower than its full width, leaves out whole
    columns (highest ``priorities`` first) and names them in its caption, rather than let rich
    cut cells to ``…``. Its cells do not wrap, so every row stays one line."""

    def __init__(self, *args: Any, priorities: list[int], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.priorities = priorities

    def fitted(self, width: int) -> Table:
        """The table with the columns that fit in ``width`` characters."""
        from rich.cells import cell_len

        widths = [max([cell_len(str(c.header))] + [cell_len(str(v)) for v in c._cells])
                  for c in self.columns]
        keep = list(range(len(self.columns)))
        # each column takes its text, one space either side and one border; plus the left edge
        need = lambda cols: sum(widths[j] + 3 for j in cols) + 1  # noqa: E731
        for j in sorted(keep, key=lambda j: -self.priorities[j]):
            if need(keep) <= width or self.priorities[j] == 0 or len(keep) == 1:
                break
            keep.remove(j)
        left_out = set(range(len(self.columns))) - set(keep)
        for j in sorted(left_out, key=lambda j: self.priorities[j]):
            if need([*keep, j]) <= width:  # a narrower column left out may fit after all
                keep = sorted([*keep, j])
        if len(keep) == len(self.columns):
            return self._plain(keep, None)
        left_out = ", ".join(str(self.columns[j].header) for j in range(len(self.columns))
                             if j not in keep)
        return self._plain(keep, f"(left out at this width: {left_out})")

    def _plain(self, keep: list[int], caption: str | None) -> Table:
        table = Table(title=self.title, caption=caption or self.caption)
        for j in keep:
            c = self.columns[j]
            table.add_column(c.header, justify=c.justify, no_wrap=c.no_wrap)
        for r in range(self.row_count):
            table.add_row(*(self.columns[j]._cells[r] for j in keep))
        return table

    def __rich_console__(self, console: Any, options: Any) -> Any:
        yield self.fitted(options.max_width)

    def __rich_measure__(self, console: Any, options: Any) -> Any:
        return self.fitted(options.max_width).__rich_measure__(console, options)


_REDUCTIONS = {"mean": np.mean, "median": np.median, "min": np.min, "max": np.max}


def _dotted(path: tuple) -> str:
    """A pytree key path as dotted names: ``{'w': [a, b]}``'s second leaf is ``w.1``."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return ".".join(parts)


def _dotted_columns(name: str, tree: PyTree) -> dict[str, np.ndarray]:
    """One column per element of each leaf of a pytree with a leading config axis."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not _per_config(leaf):
            continue
        leaf = np.asarray(leaf)
        prefix = ".".join(filter(None, [name, _dotted(path)]))
        for index in np.ndindex(leaf.shape[1:]):
            out[".".join([prefix, *map(str, index)])] = leaf[(slice(None), *index)]
    return out


# --- NPZ helpers --------------------------------------------------------------------------------

_NPZ_MARK = "__gdjax__"


_WRITABLE = (np.ndarray, np.generic, jax.Array, int, float, bool, str)


def _per_config(leaf: Any) -> bool:
    """Whether ``leaf`` has a config axis: an array of at least one dimension, not a module's
    function or setting carried unchanged (those are not columns)."""
    return isinstance(leaf, np.ndarray | jax.Array) and leaf.ndim > 0


def _config_params(params: PyTree, i: int) -> PyTree:
    """Config ``i``'s parameters: the row of every trained (floating-point) array; the leaves
    carried unchanged (a module's functions and settings) are the same for every config."""
    def row(a):
        if isinstance(a, np.ndarray | jax.Array) and np.issubdtype(a.dtype, np.inexact):
            return np.asarray(a[i])
        return a

    return jax.tree.map(row, params)


def _arrays_only(tree: PyTree, name: str, where: str) -> PyTree:
    """``tree`` with each leaf that is not an array or a number (a model's activation function,
    say: an equinox module passed as parameters) replaced by ``None``, with a warning naming
    them: the arrays are written, and those leaves read back as ``None``."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    dropped = [jax.tree_util.keystr(p) for p, x in leaves if not isinstance(x, _WRITABLE)]
    if not dropped:
        return tree
    shown = ", ".join(f"{name}{d}" for d in dropped[:4]) + (", ..." if len(dropped) > 4 else "")
    warnings.warn(
        f"{len(dropped)} leaves of {name} are not arrays and are not written to {where}: "
        f"{shown} (a model's functions or settings); they read back as None, the arrays "
        "beside them in full", UserWarning, stacklevel=3)
    return jax.tree.map(lambda x: x if isinstance(x, _WRITABLE) else None, tree)


def _npz_encode(tree: PyTree, arrays: dict[str, np.ndarray]) -> Any:
    """The structure of ``tree`` as JSON, its leaves stored in ``arrays`` under new names."""
    if tree is None:
        return {"none": None}
    if isinstance(tree, dict):
        bad = [k for k in tree if not isinstance(k, str)]
        if bad:
            raise TypeError(f"cannot write a dict with non-str keys {bad!r} to .npz")
        return {"dict": {k: _npz_encode(v, arrays) for k, v in tree.items()}}
    if isinstance(tree, list | tuple) and type(tree) in (list, tuple):
        return {type(tree).__name__: [_npz_encode(v, arrays) for v in tree]}
    if isinstance(tree, np.ndarray | np.generic | jax.Array | int | float | bool | str):
        a = np.asarray(tree)
        if a.dtype.kind not in "biufU":
            raise TypeError(f"cannot write an array of dtype {a.dtype} to .npz")
        name = f"a{len(arrays)}"
        if a.ndim and a.shape[0] > 1 and a.strides[0] == 0:  # one row for every config
            arrays[name] = a[0]
            return {"array": name, "rows": a.shape[0]}
        arrays[name] = a
        return {"array": name}
    kind, children = _children(tree, ".npz")
    return {"node": {"type": kind,
                     "children": {k: _npz_encode(v, arrays) for k, v in children.items()}}}


def _npz_decode(doc: Any, arrays: dict[str, np.ndarray]) -> PyTree:
    kind, body = next(iter(doc.items()))
    if kind == "none":
        return None
    if kind == "dict":
        return {k: _npz_decode(v, arrays) for k, v in body.items()}
    if kind in ("list", "tuple"):
        items = [_npz_decode(v, arrays) for v in body]
        return items if kind == "list" else tuple(items)
    if kind == "node":
        return _as_dict(body["type"],
                        {k: _npz_decode(v, arrays) for k, v in body["children"].items()})
    if "rows" in doc:  # a row shared by every config, stored once: a read-only view again
        row = arrays[body]
        return np.broadcast_to(row, (doc["rows"], *row.shape))
    return arrays[body]


# --- JSON helpers -------------------------------------------------------------------------------


def _encode(tree: PyTree) -> Any:
    if tree is None:
        return {"none": None}
    if isinstance(tree, dict):
        bad = [k for k in tree if not isinstance(k, str)]
        if bad:
            raise TypeError(f"cannot write a dict with non-str keys {bad!r} to JSON")
        return {"dict": {k: _encode(v) for k, v in tree.items()}}
    if isinstance(tree, list | tuple) and type(tree) in (list, tuple):
        return {type(tree).__name__: [_encode(v) for v in tree]}
    if isinstance(tree, np.ndarray | np.generic | jax.Array | int | float | bool | str):
        a = np.asarray(tree)
        flat = a.reshape(-1)
        if a.dtype.kind == "f":
            data = [_float(v) for v in flat.tolist()]
        elif a.dtype.kind in "iub":
            data = [int(v) for v in flat.tolist()]
        elif a.dtype.kind == "U":
            data = flat.tolist()
        else:
            raise TypeError(f"cannot write an array of dtype {a.dtype} to JSON")
        dtype = a.dtype.str if a.dtype.kind == "U" else str(a.dtype)
        return {"array": {"dtype": dtype, "shape": list(a.shape), "data": data}}
    kind, children = _children(tree, "JSON")
    return {"node": {"type": kind, "children": {k: _encode(v) for k, v in children.items()}}}


def _children(tree: PyTree, where: str) -> tuple[str, dict[str, PyTree]]:
    """Another registered pytree node (a NamedTuple, flax's ``FrozenDict``, an equinox module):
    its type's name and its children keyed by their path entry's name, which is how it is
    written and read back (as a dict: the type itself is not rebuilt)."""
    entries, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is not tree)
    if not entries or (len(entries) == 1 and entries[0][1] is tree):
        raise TypeError(
            f"cannot write a leaf of type {type(tree).__name__} to {where}: only arrays, "
            "numbers and pytrees of them (dicts, lists, tuples, registered nodes) are written"
        )
    children = {}
    for path, child in entries:
        (entry,) = path
        key = getattr(entry, "name", getattr(entry, "key", getattr(entry, "idx", entry)))
        children[str(key)] = child
    kind = type(tree)
    return f"{kind.__module__}.{kind.__qualname__}", children


def _as_dict(kind: str, children: dict[str, PyTree]) -> dict[str, PyTree]:
    warnings.warn(f"a pytree node of type {kind} is read back as a dict of its children "
                  f"{sorted(children)} (the type itself is not rebuilt)", stacklevel=4)
    return children


def _float(v: float) -> float | str:
    return v if math.isfinite(v) else repr(v)


def _decode(doc: Any) -> PyTree:
    (kind, body), = doc.items()
    if kind == "none":
        return None
    if kind == "dict":
        return {k: _decode(v) for k, v in body.items()}
    if kind == "list":
        return [_decode(v) for v in body]
    if kind == "tuple":
        return tuple(_decode(v) for v in body)
    if kind == "node":
        return _as_dict(body["type"], {k: _decode(v) for k, v in body["children"].items()})
    dtype = np.dtype(body["dtype"])
    data = [float(v) for v in body["data"]] if dtype.kind == "f" else body["data"]
    return np.asarray(data, dtype=dtype).reshape(body["shape"])
