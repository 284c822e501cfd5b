"""Run every benchmark and print one table of ratios.

Usage::

    python -m benchmarks              # all benchmarks
    python -m benchmarks fd sweep     # only those whose module name contains a word given
    python -m benchmarks --quick      # smaller sizes, for a smoke run
    python -m benchmarks --markdown   # the table as Markdown rows (for RESULTS.md)
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import time

from rich.console import Console
from rich.table import Table

import benchmarks
from benchmarks.harness import machine


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("only", nargs="*", help="run only modules whose name contains one of these")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()

    names = sorted(
        m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")
    )
    if args.only:
        names = [n for n in names if any(w in n for w in args.only)]
    console = Console()
    console.print(f"[bold]machine[/]: {machine()}  date: {time.strftime('%Y-%m-%d')}")
    columns = ("benchmark", "case", "gdjax", "peer", "peer time", "peer / gdjax", "note")
    table, lines = Table(*columns), [f"| {' | '.join(columns)} |", "|---" * len(columns) + "|"]
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        t0 = time.perf_counter()
        rows = module.run(quick=args.quick)
        console.print(f"{name}: {time.perf_counter() - t0:.1f} s")
        for r in rows:
            cells = (r.benchmark, r.case, _fmt(r.gdjax_s), r.peer, _fmt(r.peer_s),
                     f"{r.speedup:.2f}x", r.note)
            table.add_row(*cells)
            lines.append(f"| {' | '.join(cells)} |")
    if args.markdown:
        print("\n".join(lines))
    else:
        console.print(table)


def _fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


if __name__ == "__main__":
    main()
