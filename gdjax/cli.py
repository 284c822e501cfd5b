"""The ``gdjax`` command: ``demo``, ``sweep``, ``check`` and ``race``.

Exit status:

* 0 on success;
* 1 when ``gdjax check`` finds a wrong gradient (or ``gdjax demo`` fails to reproduce the seed or
  a gradient check);
* 2 for bad usage (an unknown option, a bad value, a module that cannot be imported, a file that
  cannot be read or written): one line on stderr that names the argument and its value;
* 3 for an internal error (a bug in gdjax): one line on stderr, the traceback only with
  ``--debug``;
* 141 (128 + SIGPIPE, as other Unix tools) when the reader of stdout went away
  (``gdjax check ... --json | head``), quietly.

Usage errors are told from internal errors at the call boundary: the command line's values are
checked here (argparse types and :class:`UsageError`), and a ``ValueError``/``TypeError`` that a
library function documents for a bad argument counts as usage only when it comes out of that
call (``_library_arguments``); any other exception is an internal error.

Progress goes to stderr and results to stdout; ``--json`` prints one JSON document on stdout for
scripts. matplotlib is imported only to draw (``--no-plots`` runs without it).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import importlib
import json
import math
import os
import re
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from gdjax import __version__, functions, inputs, plot
from gdjax.check import check_grads
from gdjax.descent import gradient_descent
from gdjax.optimizers import OPTIMIZERS
from gdjax.race import AUTO_LEARNING_RATES, RACE_OPTIMIZERS, Race, race
from gdjax.results import format_value
from gdjax.sweep import sweep

SEED_RESULT = (-6.11110793e-10, 8.14814391e-10)
"""The seed's printed ``gradient_descent(function_2, [-3, 4], lr=0.1, step_num=100)``."""


class UsageError(Exception):
    """A bad command line: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (no usage block) and exits with 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------------------------
# Parsing option values.


def learning_rates(text: str) -> list[float]:
    """A learning-rate grid: ``LO:HI:N`` (N log-spaced values), ``A,B,C`` or one number.

    Example:
      >>> learning_rates("1e-3:1e-1:3")
      [0.001, 0.01, 0.1]
    """
    parts = text.split(":")
    try:
        if len(parts) == 3:
            lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
            if not (0 < lo <= hi and n >= 1) or (n == 1 and lo != hi):
                raise ValueError
            if n == 1:
                return [lo]
            ratio = math.log(hi / lo) / (n - 1)
            return [float(f"{lo * math.exp(i * ratio):.12g}") for i in range(n)]
        if len(parts) == 1:
            values = [float(v) for v in text.split(",")]
            if all(v > 0 and math.isfinite(v) for v in values):
                return values
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(
        f"expected LO:HI:N (N log-spaced values, 0 < LO <= HI), A,B,C or one positive number, "
        f"got {text!r}"
    )


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def shape(text: str) -> tuple[int, ...]:
    """An array shape: ``6``, ``3,4`` or ``()`` for a scalar."""
    if text.strip() in ("()", ""):
        return ()
    try:
        dims = tuple(int(d) for d in text.strip("()").split(",") if d.strip())
    except ValueError:
        dims = (-1,)
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected a shape like 6 or 3,4, got {text!r}")
    return dims


def point(text: str) -> list[float]:
    """A point: comma-separated numbers, e.g. ``-1.2,1``."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers like -1.2,1, got {text!r}"
        )
    return values


def box(text: str) -> tuple[float, float]:
    """A coordinate range ``LO:HI`` with ``LO < HI``."""
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        lo = hi = 0.0
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"expected LO:HI with LO < HI, got {text!r}")
    return lo, hi


def out_folder(text: str) -> Path:
    """A folder to write into: missing (it will be made) or a folder, not a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder: name a folder")
    return path


def _make_folder(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot make the --out folder {str(path)!r}: {_one_line(e)}") from None
    return path


def load_function(target: str) -> Callable:
    """The function named by ``module:function`` (or ``module:object.attribute``).

    The module is imported from the current directory or ``PYTHONPATH``.

    Raises:
      UsageError: if ``target`` is malformed, the module cannot be imported or the attribute is
        missing or not callable.
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"expected module:function, got {target!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # the user's module may fail in any way while importing
        raise UsageError(
            f"cannot import module {module_name!r} of {target!r} (looked in the current "
            f"directory and PYTHONPATH): {type(e).__name__}: {e}"
        ) from None
    for name in attribute.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            missing = "" if name == attribute else f" ({name!r} is missing)"
            raise UsageError(
                f"{target!r}: module {module_name!r} has no {attribute!r}{missing}"
            ) from None
    if not callable(obj):
        raise UsageError(f"{target!r} is not callable, it is a {type(obj).__name__}")
    return obj


def objective(name: str) -> Any:
    """A built-in test function by name, or a user's ``module:function``."""
    if ":" in name:
        return load_function(name)
    if name not in functions.ALL:
        raise UsageError(
            f"unknown function {name!r}: give a built-in ({', '.join(functions.ALL)}) or "
            "module:function"
        )
    return functions.ALL[name]


# --------------------------------------------------------------------------------------------
# Output: progress on stderr, tables and JSON on stdout.


class StdoutConsole(Console):
    """A rich console for stdout whose closed pipe is a ``BrokenPipeError`` for :func:`main`
    (rich's own handling exits with status 1, which means a wrong gradient here)."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError(32, "stdout was closed")


class Reporter:
    """Progress bars on stderr (when it is a terminal, also under ``--json``), tables on stdout;
    nothing on stdout but the JSON document under ``--json``."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        # Piped output keeps wide tables whole instead of folding them at 80 columns.
        self.out = StdoutConsole(highlight=False, width=None if sys.stdout.isatty() else 160)
        self.err = Console(stderr=True, highlight=False)

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Callable[[], None]]:
        """A progress line (a bar when ``total`` is given) for one phase of the work.

        Yields a function that advances the bar by one.
        """
        progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.completed}/{task.total}" if total else ""), TimeElapsedColumn(),
            console=self.err, disable=not self.err.is_terminal,
        )
        with progress:
            task = progress.add_task(description, total=total or 1)
            yield lambda: progress.advance(task)
            progress.update(task, completed=total or 1)

    def note(self, text: str) -> None:
        """A remark on stderr (also with ``--json``, whose stdout stays one document)."""
        self.err.print(f"note: {text}", soft_wrap=True)

    def table(self, table: Table) -> None:
        if not self.as_json:
            self.out.print(table)

    def line(self, text: str) -> None:
        if not self.as_json:
            self.out.print(text)

    def json(self, document: Any) -> None:
        if self.as_json:
            print(json.dumps(document, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _g(x: Any) -> str:
    return f"{float(x):.4g}"


# --------------------------------------------------------------------------------------------
# The commands.


def run_demo(args: argparse.Namespace) -> int:
    """``gdjax demo``: the seed's example, a race, a learning-rate sweep and gradient checks."""
    report = Reporter(args.json)
    out: Path = args.out
    _make_folder(out)
    started = time.perf_counter()
    files: dict[str, Path] = {}

    seed = _demo_seed(report)
    report.table(_rows_table("1. the seed's example, float64", seed))

    f = functions.rosenbrock
    result = _race(report, f, np.asarray(f.start, np.float32), RACE_OPTIMIZERS,
                   learning_rate=None, steps=1000)
    rows = result.rows
    report.table(_race_table(rows, "2. optimiser race on Rosenbrock, 1000 steps"))
    files["race_table"] = _write_csv(out / "race.csv", rows)
    if not args.no_plots:
        files["race"] = _race_picture(f, result, out / "race_rosenbrock.png", report)

    # The seed's function has Hessian 2 I, so L = 2: gradient descent diverges for lr > 2/L = 1.
    f2 = functions.function_2
    lrs = learning_rates("1e-3:3:48")
    starts = np.random.default_rng(0).uniform(-5.0, 5.0, (16, 2)).astype(np.float32)

    with report.task(f"sweeping {len(lrs)} learning rates x {len(starts)} starts"):
        res = sweep(f2, starts[0], "sgd", grid={"learning_rate": lrs, "x0": starts}, steps=100,
                    progress=False)
    report.table(_lr_table(res, "3. sgd on function_2 by learning rate (2/L = 1)"))
    sweep_summary = _sweep_summary(res)
    report.line(_best_line(sweep_summary))
    files.update({f"lr_sweep_{k}": v for k, v in _write_sweep(
        res, f2, out, "lr_sweep", plots=not args.no_plots, report=report, history=True,
        table=True, boundary=1.0).items()})

    checks = _demo_gradient_checks(report)
    report.table(_rows_table("4. gradient checks of the built-in functions", checks))
    files["gradient_checks"] = _write_csv(out / "gradient_checks.csv", checks)

    summary = {"seed": seed, "race": rows, "lr_sweep": sweep_summary,
               "gradient_checks": checks, "seconds": round(time.perf_counter() - started, 1),
               "files": files}
    files["summary"] = out / "summary.json"
    files["summary"].write_text(json.dumps(summary, indent=2, default=_json_default))
    report.line(f"\nwrote {len(files)} files to [bold]{out}[/bold] in "
                f"{summary['seconds']:.1f} s:\n  " + "\n  ".join(str(p) for p in files.values()))
    report.json(summary)
    ok = all(r["matches_seed"] for r in seed) and all(r["ok"] for r in checks)
    return 0 if ok else 1


def _demo_seed(report: Reporter) -> list[dict[str, Any]]:
    """The seed's example with both gradient sources, against the seed's printed result."""
    rows = []
    with report.task("1. the seed's example"):
        for grad in ("numerical", "autodiff"):
            x = gradient_descent(functions.function_2, np.array([-3.0, 4.0]), lr=0.1, step_num=100,
                                 grad=grad)
            rows.append({
                "gradient": grad, "x": np.array2string(x, precision=8),
                "seed printed": np.array2string(np.asarray(SEED_RESULT), precision=8),
                "matches_seed": bool(np.allclose(x, SEED_RESULT, rtol=1e-8, atol=0)),
            })
    return rows


def _demo_gradient_checks(report: Reporter) -> list[dict[str, Any]]:
    """``check_grads`` on every built-in function at its suggested start, in float64."""
    rows = []
    with report.task(f"checking {len(functions.ALL)} gradients",
                     total=len(functions.ALL)) as advance:
        for name, f in functions.ALL.items():
            x = np.asarray(f.start, np.float64)
            with inputs.precision(x):
                result = check_grads(f, x)
            rows.append({"function": name, "at": _point(x), "ok": bool(result.ok),
                         "verdict": result.kind, "rel_error": f"{result.rel_error:.1e}"})
            advance()
    return rows


def _lr_table(res: Any, title: str) -> Table:
    """Per learning rate (about 12 of them): the median final loss of the runs that did not
    diverge, and how many ran out of steps or diverged."""
    lrs = np.asarray(res.grid["learning_rate"])
    table = Table(title=title)
    for column in ("learning rate", "median final loss", "max_steps", "diverged"):
        table.add_column(column, justify="right")
    unique = np.unique(lrs)
    for lr in unique[:: max(1, len(unique) // 12)]:
        at = lrs == lr
        alive = at & (res.status != "diverged")
        median = f"{np.median(res.loss[alive]):.3e}" if alive.any() else "-"
        table.add_row(_g(lr), median, str(int(np.sum(res.status[at] == "max_steps"))),
                      str(int(np.sum(res.status[at] == "diverged"))))
    return table


def _rows_table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(column.replace("_", " "))
    for r in rows:
        table.add_row(*(_verdict(v) if isinstance(v, bool) else str(v) for v in r.values()))
    return table


def _verdict(ok: bool) -> str:
    return "[green]yes[/green]" if ok else "[red]NO[/red]"


def run_check(args: argparse.Namespace) -> int:
    """``gdjax check``: the user's gradient against finite differences; exit 0 right, 1 wrong."""
    f = objective(args.target) if args.target in functions.ALL else load_function(args.target)
    if args.point is not None:
        try:
            x = np.load(args.point, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:  # EOFError: an empty file
            raise UsageError(f"cannot read --point {str(args.point)!r}: {_one_line(e)}") from None
        if x.size == 0:
            raise UsageError(f"--point {str(args.point)!r} holds an empty array of shape "
                             f"{x.shape}: save the point to check")
        if args.dtype is not None:
            x = x.astype(args.dtype)
        where = f"the point in {args.point}"
    elif args.shape is not None:
        x = np.random.default_rng(args.seed).standard_normal(args.shape)
        x = np.asarray(x, args.dtype or "float64")
        where = f"a standard-normal point of shape {args.shape} (seed {args.seed})"
    elif hasattr(f, "start"):  # a built-in: its suggested start
        x = np.asarray(f.start, args.dtype or "float64")
        where = f"its suggested start {_point(x)}"
    else:
        raise UsageError("one of the arguments --shape --point is required for a "
                         "module:function (a built-in is checked at its suggested start)")
    if not np.issubdtype(x.dtype, np.floating):
        raise UsageError(f"the point must hold floats, got dtype {x.dtype}; use --dtype")
    if hasattr(f, "in_dim") and x.ndim == 1 and x.size != f.start.size:
        with _library_arguments():
            f = f.in_dim(x.size)
    with inputs.precision(x):
        try:
            report = check_grads(f, x, order=args.order, rtol=args.rtol, atol=args.atol)
        except Exception as e:  # the user's function failed (or returned no scalar): one line
            raise UsageError(f"{args.target} failed at {where}: {type(e).__name__}: "
                             f"{_one_line(e)}") from None
    if args.json:
        print(json.dumps({"target": args.target, "dtype": str(x.dtype), "shape": list(x.shape),
                          **dataclasses.asdict(report), "report": str(report)},
                         indent=2, default=_json_default))
    else:
        out = StdoutConsole(highlight=False, soft_wrap=True)  # the report's lines stay whole
        out.print(f"{args.target} at {where}, {x.dtype}:")
        out.print(str(report), markup=False)
        out.print("[green]gradient OK[/green]" if report.ok
                  else f"[red]gradient check FAILED: {report.kind}[/red]")
    return 0 if report.ok else 1


def run_race(args: argparse.Namespace) -> int:
    """``gdjax race``: the optimisers from one start, a table and a contour picture."""
    report = Reporter(args.json)
    f = objective(args.function)
    names = _optimizer_names(args.optimizers)
    lr = None if args.lr == "auto" else _one_learning_rate(args.lr)
    f, x0 = _start(f, args.x0, dim=None, dim_option=False)
    _make_folder(args.out)
    with _library_arguments():
        result = _race(report, f, x0, names, learning_rate=lr, steps=args.steps)
    rows = result.rows
    report.table(_race_table(rows, f"race on {_name(f, args.function)} from {_point(x0)}, "
                                   f"{args.steps} steps"))
    files = {}
    if not args.no_plots and x0.size == 2:
        files["race"] = _race_picture(f, result, args.out / "race.png", report)
    elif not args.no_plots:
        report.line(f"(no picture: the start has {x0.size} coordinates, the contour plot needs 2)")
    files["table"] = _write_csv(args.out / "race.csv", rows)
    _wrote(report, files)
    report.json({"function": args.function, "x0": x0, "steps": args.steps, "results": rows,
                 "files": files})
    return 0


def _race(report: Reporter, f: Any, x0: Any, names: Any, **kwargs: Any) -> Race:
    """:func:`gdjax.race` under a progress bar."""
    tuning = "tuning and racing" if kwargs["learning_rate"] is None else "racing"
    with report.task(f"{tuning} {len(names)} optimisers", total=len(names)) as advance:
        return race(f, x0, names, callback=lambda name: advance(), **kwargs)


def _race_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for column in ("optimizer", "learning rate", "final loss", "|x - x*|", "status", "steps"):
        table.add_column(column, justify="left" if column == "optimizer" else "right")
    best = min(range(len(rows)), key=lambda i: _sort_key(rows[i]))
    for i, r in enumerate(rows):
        d = r["distance_to_minimizer"]
        table.add_row(
            f"[bold]{r['optimizer']}[/bold] (best)" if i == best else r["optimizer"],
            _g(r["learning_rate"]), f"{r['loss']:.3e}", "" if d is None else f"{d:.2e}",
            r["status"], str(r["steps"]),
        )
    return table


def _sort_key(row: dict[str, Any]) -> float:
    loss = row["loss"]
    return math.inf if row["status"] == "diverged" or not math.isfinite(loss) else loss


def _race_picture(f: Any, result: Race, path: Path, report: Reporter) -> Path:
    rows, paths = result.rows, result.paths
    curves = {
        f"{r['optimizer']} (lr {_g(r['learning_rate'])}): {r['loss']:.1e}": paths[
            r["optimizer"]]
        for r in rows
    }
    domain = None
    if getattr(f, "domain", None) is None:  # a user's function: frame the runs that stayed
        kept = [paths[r["optimizer"]] for r in rows if r["status"] != "diverged"] or list(
            paths.values())
        points = np.concatenate(kept)
        lo, hi = points.min(axis=0), points.max(axis=0)
        pad = np.maximum(0.15 * (hi - lo), 0.5)
        domain = np.stack([lo - pad, hi + pad], axis=1)
    with report.task("drawing the race"):
        plot.trajectories(f, curves, domain=domain, steps=result.steps, path=path,
                          title=f"{_name(f, 'f')}: {int(result.steps[-1])} steps from "
                          f"{_point(next(iter(paths.values()))[0])} (legend: final loss)")
    return path


def run_sweep(args: argparse.Namespace) -> int:
    """``gdjax sweep``: a grid of learning rates x starts x seeds; table, files, pictures."""
    report = Reporter(args.json)
    f = objective(args.function)
    hyper = _hyperparameters(args.hp)
    f, x0 = _start(f, args.x0, dim=args.dim, dim_option=True)
    grid: dict[str, Any] = {"learning_rate": args.lr}
    zipped = ()
    random_starts = args.starts * args.seeds > 1
    if random_starts and args.x0 is not None:
        raise UsageError(f"--x0 is one start, but --starts {args.starts} --seeds "
                         f"{args.seeds} asks for random ones: give one or the other")
    lo, hi = _box(f, args.box, x0.size)
    if random_starts:
        grid["seed"] = np.repeat(np.arange(args.seeds), args.starts)
        grid["x0"] = np.concatenate([
            np.random.default_rng(s).uniform(lo, hi, (args.starts, x0.size))
            for s in range(args.seeds)
        ]).reshape(-1, *x0.shape).astype(x0.dtype)
        zipped = [("seed", "x0")]
    elif args.x0 is None and not hasattr(f, "start"):  # --dim: no start given or suggested
        x0 = np.random.default_rng(0).uniform(lo, hi).astype(x0.dtype)
        report.note(f"the start is drawn uniformly in --box {_g(lo[0])}:{_g(hi[0])} in "
                    f"{x0.size} dimensions (seed 0): {format_value(x0)}; give --x0 to choose it")
    # the sweep's own bar (chunks done, elapsed and remaining time) whenever stderr is a
    # terminal, --json or not: the JSON document goes to stdout
    show = report.err.is_terminal
    with _library_arguments():
        res = sweep(f, x0, args.optimizer, grid=grid, zip_axes=zipped, steps=args.steps,
                    tol=args.tol, record_every=args.record_every, checkpoint=args.checkpoint,
                    progress=show, **hyper)
    _refuse_non_finite_starts(res, x0 if "x0" not in grid else None, report)
    report.table(res.table(top=args.top))
    summary = _sweep_summary(res)
    report.line(_best_line(summary))
    if args.tol is None and summary["counts"]["converged"] == 0:
        report.line("(no --tol: a run stops only after --steps, so none reads 'converged'; "
                    "--tol TOL stops each run once its gradient norm is <= TOL)")
    files = _write_sweep(res, f, args.out, "sweep", plots=not args.no_plots, report=report,
                         history=args.history, table=args.csv)
    doc = {"function": args.function, "optimizer": args.optimizer, "steps": args.steps,
           **summary, "files": files}
    files["summary"] = args.out / "sweep_summary.json"
    files["summary"].write_text(json.dumps(doc, indent=2, default=_json_default))
    _wrote(report, files)
    report.json(doc)
    return 0


def _refuse_non_finite_starts(res: Any, x0: Any, report: Reporter) -> None:
    """A config that diverged at step 0 started where f (or its gradient) is not finite: not a
    learning rate's fault. All of them: a usage error; some: a note."""
    at_start = np.asarray(res.diverged_at) == 0
    if not at_start.any():
        return
    if at_start.all():
        where = (f"at --x0 {format_value(x0)}" if x0 is not None
                 else f"at every one of the {len(res)} random starts")
        raise UsageError(f"f (or its gradient) is not finite {where}, so no learning rate can "
                         "help: choose a start in f's domain (--x0, --box)")
    report.note(f"{int(at_start.sum())} of {len(res)} configs start where f (or its gradient) "
                "is not finite: they are reported diverged at step 0")


def _sweep_summary(res: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {"configs": len(res), "counts": res.counts()}
    try:
        best = res.best()
    except ValueError:
        summary["best"] = None
    else:
        summary["best"] = {"index": best.index, "config": best.config, "loss": best.loss,
                           "params": best.params, "status": str(res.status[best.index])}
    return summary


def _best_line(summary: dict[str, Any]) -> str:
    best = summary["best"]
    if best is None:
        return "[red]every config diverged[/red]: try smaller learning rates"
    config = ", ".join(f"{k}={format_value(v)}" for k, v in best["config"].items())
    return (f"best: config {best['index']} ({config}): final loss {best['loss']:.4g}, "
            f"{best['status']}, x = {format_value(best['params'])}")


def _write_sweep(res: Any, f: Any, out: Path, stem: str, *, plots: bool, report: Reporter,
                 history: bool, table: bool, boundary: float | None = None) -> dict[str, Path]:
    """The sweep's arrays (``.npz``, the history only with ``history``), its CSV table (with
    ``table``), and its pictures: loss curves, final loss vs learning rate and, for a 2-D
    function with several starts and several known minimisers, a basin map."""
    _make_folder(out)
    files = {"npz": out / f"{stem}.npz"}
    res.to_npz(files["npz"], history=history)
    if table:
        files["csv"] = out / f"{stem}.csv"
        res.to_csv(files["csv"])
    if not plots:
        return files

    minimum = getattr(f, "minimum", None)
    minimum = minimum if minimum is not None and math.isfinite(minimum) and minimum != 0 else None
    lrs = np.asarray(res.grid["learning_rate"])
    name = _name(f, "f")
    with report.task("drawing the sweep"):
        # One curve per learning rate (its first config): thousands of lines say less. With one
        # learning rate, the curves of (up to 64) configs instead.
        files["loss_curves"] = out / f"{stem}_loss_curves.png"
        first = np.unique(lrs, return_index=True)[1]
        if len(first) > 1:
            plot.loss_curves(res.history.step[first], res.history.loss[first], lrs[first],
                             status=res.status[first], minimum=minimum,
                             title=f"{name}: loss by learning rate", path=files["loss_curves"])
        else:
            some = np.arange(min(len(res), 64))
            plot.loss_curves(res.history.step[some], res.history.loss[some], some,
                             label="config", log_color=False, status=res.status[some],
                             minimum=minimum, path=files["loss_curves"],
                             title=f"{name}: loss of {len(some)} configs at learning rate "
                             f"{_g(lrs[0])}")
        files["final_loss"] = out / f"{stem}_final_loss.png"
        plot.loss_vs_learning_rate(lrs, res.loss, res.status, minimum=minimum,
                                   boundary=boundary, path=files["final_loss"],
                                   title=f"{name}: final loss vs learning rate ({len(res)} "
                                   "configs)")
        starts = res.grid.get("x0")
        minimizers = getattr(f, "minimizers", None)
        if starts is not None and np.shape(starts)[1:] == (2,) and minimizers is not None \
                and len(minimizers) > 1:
            best_lr = lrs[res.best().index] if res.counts()["diverged"] < len(res) else lrs[0]
            at = lrs == best_lr
            files["basins"] = out / f"{stem}_basins.png"
            plot.basin_map(starts[at], res.params[at], res.status[at], minimizers, f=f,
                           title=f"{name}: basins at learning rate {_g(best_lr)}",
                           path=files["basins"])
    return files


def _wrote(report: Reporter, files: dict[str, Path]) -> None:
    report.line("wrote " + "\n      ".join(str(p) for p in files.values()))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _optimizer_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in OPTIMIZERS]
    if not names or unknown:
        raise UsageError(f"--optimizers must name some of {', '.join(OPTIMIZERS)}, got {text!r}")
    return names


def _one_learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        raise UsageError(f"--lr must be 'auto' or a positive number, got {text!r}")
    return value


def _hyperparameters(pairs: list[str]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise UsageError(f"--hp expects NAME=VALUE with a number, got {pair!r}")
    return out


def _start(f: Any, x0: list[float] | None, dim: int | None, *, dim_option: bool
           ) -> tuple[Any, Any]:
    """The function (in ``dim`` dimensions) and the start as a float32 array: ``--x0``, else the
    function's own, else zeros in ``dim`` dimensions (``dim_option``: the command has ``--dim``).
    """
    if dim is None and x0 is not None and getattr(f, "dim", 0) is None:
        dim = len(x0)  # a built-in of any dimension takes the dimension of --x0
    if hasattr(f, "in_dim") and dim is not None:
        with _library_arguments():  # a fixed-dimension built-in and another --dim
            f = f.in_dim(dim)
    if x0 is not None:
        start = np.asarray(x0, np.float32)
        if dim is not None and start.size != dim:
            raise UsageError(f"--x0 has {start.size} coordinates but --dim is {dim}")
    elif hasattr(f, "start"):
        start = np.asarray(f.start, np.float32)
    elif dim is not None:
        start = np.zeros(dim, np.float32)
    else:
        raise UsageError("a module:function has no suggested start: give --x0 X1,X2,..."
                         + (" or --dim N (a start drawn in --box)" if dim_option else ""))
    return f, start


def _box(f: Any, box: tuple[float, float] | None, dim: int) -> tuple[Any, Any]:
    if box is not None:
        return np.full(dim, box[0]), np.full(dim, box[1])
    domain = getattr(f, "domain", None)
    if domain is None:
        return np.full(dim, -1.0), np.full(dim, 1.0)
    domain = np.asarray(domain if len(domain) == dim else [domain[0]] * dim)
    return domain[:, 0], domain[:, 1]


def _name(f: Any, fallback: str) -> str:
    return getattr(f, "name", None) or getattr(f, "__name__", fallback)


def _point(x: Any) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in x.ravel()) + ")"


# --------------------------------------------------------------------------------------------
# The parser.

_EPILOG_DEMO = """examples:
  gdjax demo                 # everything, written to ./gdjax-out
  gdjax demo --out results   # elsewhere
  gdjax demo --json          # the summary as JSON on stdout
"""

_EPILOG_SWEEP = """examples:
  gdjax sweep rosenbrock --optimizer sgd --lr 1e-4:1e-2:32
  gdjax sweep himmelblau --optimizer adam --lr 0.05 --starts 256 --steps 500
  gdjax sweep mymodule:loss --dim 10 --lr 1e-3:1:16 --seeds 4 --out sweep-out --json
  gdjax sweep rosenbrock --optimizer momentum --lr 1e-4:1e-2:16 --hp momentum=0.95
  gdjax sweep rosenbrock --x0 -1.2,1 --lr 1e-3     # negative values: also --x0=-1.2,1
  gdjax sweep himmelblau --starts 4096 --box -5:5 --history --checkpoint ckpt

The grid is the product of the learning rates, the starts and the seeds: --lr 1e-4:1e-1:64
--starts 4 --seeds 2 runs 512 configs, all in one compiled program.

Files in --out: sweep.npz (every config's grid values, outcomes and final parameters; the
history with --history; read it with gdjax.load), sweep_summary.json (counts, the best config,
the files), sweep.csv with --csv, and the pictures unless --no-plots.
"""

_EPILOG_CHECK = """examples:
  gdjax check rosenbrock                  # a built-in, at its suggested start
  gdjax check mymodule:loss --shape 6
  gdjax check mymodule:loss --shape 3,4 --dtype float32 --seed 1
  gdjax check mymodule:loss --point x.npy --json

Exit status: 0 when autodiff and finite differences agree, 1 when they do not, 2 for bad
usage (one line naming the argument), 3 for an internal error (the traceback with --debug).
"""

_EPILOG_RACE = """examples:
  gdjax race                              # the six optimisers on Rosenbrock
  gdjax race beale --steps 2000
  gdjax race himmelblau --optimizers sgd,adam --lr 0.01 --x0 0,0

With --lr auto (the default) each optimiser runs with its best learning rate from a log grid,
so the race compares optimisers, not the luck of one learning rate.
"""


def _wrap(text: str) -> str:
    """A paragraph for help pages whose formatter keeps the epilog's line breaks."""
    return textwrap.fill(text, 79)


def build_parser() -> argparse.ArgumentParser:
    """The ``gdjax`` argument parser with its four subcommands."""
    parser = _Parser(
        prog="gdjax",
        description="Gradient descent you can verify and sweep, on JAX.",
        epilog="Run 'gdjax COMMAND --help' for the options of a command, with examples.\n\n"
        "Exit status: 0 ok; 1 a wrong gradient or a failed check; 2 bad usage (one line naming "
        "the\nargument); 3 an internal error (the traceback with --debug); 141 stdout closed "
        "early.\nNegative values: --x0 -1.2,1, --box -2:2 and --x0=-1.2,1 all work.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gdjax {__version__}")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=_Parser)
    raw = argparse.RawDescriptionHelpFormatter

    demo = commands.add_parser(
        "demo", help="the seed's example, an optimiser race, a learning-rate sweep and "
        "gradient checks, written to a folder", epilog=_EPILOG_DEMO, formatter_class=raw,
        description=_wrap("Reproduce the seed's gradient-descent example, race the optimisers on "
        "Rosenbrock, sweep learning rates on the seed's function, check the gradients of the "
        "built-in functions, and write tables and pictures to a folder."),
    )
    _output_options(demo, default_out="gdjax-out")
    _debug_option(demo)
    demo.set_defaults(run=run_demo)

    sweep = commands.add_parser(
        "sweep", help="a grid of learning rates x starts x seeds in one compiled program",
        epilog=_EPILOG_SWEEP, formatter_class=raw,
        description=_wrap(
            "Run an optimiser on a grid of learning rates, starting points and seeds; print the "
            "results table and the best config; write the arrays (.npz), a JSON summary and "
            "plots."
        ),
    )
    sweep.add_argument("function", nargs="?", default="rosenbrock",
                       help="a built-in test function (default: rosenbrock) or a user's "
                       "module:function taking one array")
    sweep.add_argument("--optimizer", default="sgd", metavar="NAME",
                       help="sgd, momentum, nesterov, adagrad, rmsprop, adam or adamw "
                       "(default: sgd)")
    sweep.add_argument("--lr", type=learning_rates, default=learning_rates("1e-4:1e-1:16"),
                       metavar="GRID", help="learning rates: LO:HI:N for N log-spaced values, "
                       "A,B,C, or one number (default: 1e-4:1e-1:16)")
    sweep.add_argument("--starts", type=positive_int, default=1, metavar="N",
                       help="starting points per seed; with --starts 1 --seeds 1 (the default) "
                       "the run starts at --x0 or the function's suggested start, otherwise "
                       "each seed draws N starts uniformly in --box")
    sweep.add_argument("--seeds", type=positive_int, default=1, metavar="N",
                       help="seeds 0..N-1 of the random starts; the table and files name each "
                       "config's seed (default: 1)")
    sweep.add_argument("--steps", type=positive_int, default=1000, metavar="N",
                       help="updates per run (default: 1000)")
    sweep.add_argument("--tol", type=float, default=None, metavar="TOL",
                       help="stop a run once its gradient norm is <= TOL (default: run all steps)")
    _start_options(sweep)
    sweep.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                       help="a fixed hyperparameter of the optimiser, e.g. momentum=0.95 or "
                       "b1=0.8 (repeatable)")
    sweep.add_argument("--top", type=positive_int, default=10, metavar="N",
                       help="rows of the results table, best first, one line each (default: 10)")
    _output_options(sweep, default_out="gdjax-sweep")
    sweep.add_argument("--history", action="store_true",
                       help="also write each config's loss and gradient-norm history to "
                       "sweep.npz (default: final outcomes only)")
    sweep.add_argument("--record-every", type=positive_int, default=None, metavar="K",
                       help="record the history every K steps (default: about 100 records a "
                       "config, fewer for very large sweeps)")
    sweep.add_argument("--csv", action="store_true",
                       help="also write sweep.csv, one text row per config (slow for "
                       "100,000s of configs)")
    sweep.add_argument("--checkpoint", type=Path, default=None, metavar="DIR",
                       help="save each finished chunk of configs in DIR; the same command "
                       "with the same DIR resumes where it stopped")
    _debug_option(sweep)
    sweep.set_defaults(run=run_sweep)

    check = commands.add_parser(
        "check", help="verify a function's gradient against finite differences (exit 0/1)",
        epilog=_EPILOG_CHECK, formatter_class=raw,
        description=_wrap(
            "Compare jax.grad of a user's scalar function with finite differences at a random "
            "point (or one loaded from a .npy file) and print the report."
        ),
    )
    check.add_argument("target", metavar="FUNCTION",
                       help="a built-in test function (e.g. rosenbrock, checked at its "
                       "suggested start unless --shape or --point is given) or a user's "
                       "module:function, imported from the current directory or PYTHONPATH, "
                       "taking one array and returning a scalar")
    where = check.add_mutually_exclusive_group()
    where.add_argument("--shape", type=shape, metavar="SHAPE",
                       help="shape of the random point, e.g. 6 or 3,4 (required for a "
                       "module:function unless --point is given)")
    where.add_argument("--point", type=Path, metavar="FILE.npy",
                       help="check at the array stored in this .npy file instead")
    check.add_argument("--dtype", choices=("float32", "float64"), default=None,
                       help="dtype of the point (default: float64 for a random point, the "
                       "file's dtype for --point); float64 runs inside jax.enable_x64")
    check.add_argument("--seed", type=nonnegative_int, default=0, metavar="N",
                       help="seed of the random standard-normal point (default: 0)")
    check.add_argument("--order", type=int, choices=(1, 2), default=1,
                       help="2 also checks Hessian-vector products (default: 1)")
    check.add_argument("--rtol", type=float, default=None, metavar="RTOL",
                       help="relative tolerance (default: sqrt(eps) of the point's dtype)")
    check.add_argument("--atol", type=float, default=None, metavar="ATOL",
                       help="absolute tolerance (default: 1e-3 rtol max|grad|)")
    check.add_argument("--json", action="store_true",
                       help="print the report as JSON on stdout")
    _debug_option(check)
    check.set_defaults(run=run_check)

    race = commands.add_parser(
        "race", help="several optimisers on one 2-D function, drawn on its contour plot",
        epilog=_EPILOG_RACE, formatter_class=raw,
        description=_wrap(
            "Run several optimisers from one start on a 2-D function, print how close each got, "
            "and draw their trajectories on the function's contour plot."
        ),
    )
    race.add_argument("function", nargs="?", default="rosenbrock",
                      help="a built-in 2-D test function (default: rosenbrock) or "
                      "module:function")
    race.add_argument("--optimizers", default=",".join(RACE_OPTIMIZERS), metavar="A,B,...",
                      help="comma-separated optimiser names (default: "
                      f"{','.join(RACE_OPTIMIZERS)})")
    race.add_argument("--lr", default="auto", metavar="LR",
                      help="one learning rate for all, or 'auto': each optimiser's best on a "
                      f"log grid of {len(AUTO_LEARNING_RATES)} values from "
                      f"{AUTO_LEARNING_RATES[0]:g} to {AUTO_LEARNING_RATES[-1]:g} (default: "
                      "auto)")
    race.add_argument("--steps", type=positive_int, default=1000, metavar="N",
                      help="updates per optimiser (default: 1000)")
    race.add_argument("--x0", type=point, default=None, metavar="X,Y",
                      help="the start (default: the function's suggested start)")
    _output_options(race, default_out="gdjax-race")
    _debug_option(race)
    race.set_defaults(run=run_race)
    return parser


def _start_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--x0", type=point, default=None, metavar="X1,X2,...",
                        help="the start when --starts is 1, e.g. --x0 -1.2,1 (default: the "
                        "function's suggested start)")
    parser.add_argument("--dim", type=positive_int, default=None, metavar="N",
                        help="dimension of the start, for a module:function without --x0 (its "
                        "start is then drawn uniformly in --box, seed 0, and printed) or a "
                        "built-in of any dimension such as rosenbrock (default: the length of "
                        "--x0 or of the function's suggested start)")
    parser.add_argument("--box", type=box, default=None, metavar="LO:HI",
                        help="range of every coordinate of random starts, e.g. --box -2:2 "
                        "(default: the function's domain, -1:1 for a module:function)")


_DEBUG_HELP = "on an internal error (exit 3) print the traceback too"


def _debug_option(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: the top-level --debug survives a subcommand that is not given its own
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help=_DEBUG_HELP)


def _output_options(parser: argparse.ArgumentParser, default_out: str) -> None:
    parser.add_argument("--out", type=out_folder, default=default_out, metavar="DIR",
                        help=f"folder for tables and pictures, created if missing (default: "
                        f"./{default_out})")
    parser.add_argument("--no-plots", action="store_true",
                        help="write tables only, no pictures (no matplotlib needed)")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON summary on stdout instead of tables")


def entry() -> int:
    """The ``gdjax`` console script (and ``python -m gdjax``): :func:`main` with compiled
    programs kept on disk between runs (:func:`persistent_cache`)."""
    persistent_cache()
    return main()


def persistent_cache() -> str | None:
    """Turn on JAX's persistent compilation cache for this process, unless the user set one.

    Where: ``$GDJAX_CACHE_DIR``, by default ``$XDG_CACHE_HOME/gdjax/xla`` (``~/.cache/gdjax/xla``);
    ``GDJAX_CACHE_DIR=`` (empty) turns it off. A second ``gdjax demo`` then skips most
    compilation (12.8 s -> 8.5 s on the 2-core CI machine). Library calls never touch the cache
    setting: only the command line does.

    Returns:
      The directory in use, or ``None``.
    """
    import jax

    if jax.config.jax_compilation_cache_dir:  # the user's own choice stands
        return jax.config.jax_compilation_cache_dir
    where = os.environ.get("GDJAX_CACHE_DIR")
    if where is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        where = os.path.join(base, "gdjax", "xla")
    if not where:
        return None
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.05)  # most are < 1 s
    return where


def main(argv: list[str] | None = None) -> int:
    """Run the ``gdjax`` command line; returns the exit status.

    Args:
      argv: the arguments after the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
      0 on success, 1 when ``gdjax check`` finds a wrong gradient, 2 for bad usage, 3 for an
      internal error, 141 when stdout was closed early (see the module docstring).
    """
    parser = build_parser()
    args = parser.parse_args(negative_values(sys.argv[1:] if argv is None else argv))
    prog = f"gdjax {args.command}"
    try:
        return args.run(args)
    except UsageError as e:
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ImportError as e:  # matplotlib missing: the pictures are an optional extra
        hint = " (or pass --no-plots)" if hasattr(args, "no_plots") else ""
        print(f"{prog}: error: {_one_line(e)}{hint}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        _silence_stdout()
        return 141
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            traceback.print_exc()
        hint = "" if args.debug else " (run again with --debug for the traceback)"
        print(f"{prog}: internal error: {type(e).__name__}: {_one_line(e)}{hint}",
              file=sys.stderr)
        return 3


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of a closed pipe does not
    print 'Exception ignored ... BrokenPipeError' (the recipe of Python's signal docs)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


@contextlib.contextmanager
def _library_arguments() -> Iterator[None]:
    """A library call whose ``ValueError``/``TypeError`` means a bad argument (each names the
    argument and its value, and every argument here came from the command line): usage, exit 2.

    Only the call itself is wrapped, so that the same errors raised by the command's own code
    (a bug) stay internal errors, exit 3.
    """
    try:
        yield
    except (ValueError, TypeError) as e:
        raise UsageError(_one_line(e)) from e


_NEGATIVE = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)
_NUMERIC_OPTIONS = ("--x0", "--box", "--lr")


def negative_values(argv: list[str]) -> list[str]:
    """``--x0 -1.2,1`` as ``--x0=-1.2,1`` (also ``--box -2:2``, ``--lr -1``): argparse would take
    a value starting with ``-`` that is not a plain number for an option and refuse it.

    Example:
      >>> negative_values(["sweep", "--x0", "-1.2,1", "--box", "-2:2", "--steps", "5"])
      ['sweep', '--x0=-1.2,1', '--box=-2:2', '--steps', '5']
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--":  # the rest is positional
            return out + argv[i:]
        if argv[i] in _NUMERIC_OPTIONS and i + 1 < len(argv) and _NEGATIVE.match(argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


if __name__ == "__main__":
    sys.exit(entry())
