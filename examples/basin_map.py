"""Basins of attraction of Himmelblau's function: which of its four minima each start reaches.

Himmelblau's ``f(x, y) = (x^2 + y - 11)^2 + (x + y^2 - 7)^2`` has four global minima of equal
value. This example runs gradient descent from every point of an n x n grid of starts over
``[-5, 5]^2`` (one ``gdjax.sweep``, one compiled program) and colours each start by the minimum
its run ended at, grey where it diverged or did not get there. Plain SGD and heavy-ball momentum
are drawn side by side: momentum carries runs across ridges, so its basins are no longer the
regions the contour lines suggest.

Run: ``python examples/basin_map.py [--out DIR]`` (or set ``GDJAX_EXAMPLES_OUT``);
``GDJAX_EXAMPLES_FAST=1`` uses a coarser grid.
"""

import argparse
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from gdjax import functions, plot
from gdjax.sweep import starts_grid, sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the pictures (default: "
                        "$GDJAX_EXAMPLES_OUT or ./out)",
                        default=Path(os.environ.get("GDJAX_EXAMPLES_OUT", "out")))
    out = parser.parse_args().out
    n = 30 if os.environ.get("GDJAX_EXAMPLES_FAST") else 100

    f = functions.himmelblau
    starts = starts_grid(f.domain, n).astype(np.float32)
    fig = Figure(figsize=(12.0, 5.2), layout="constrained")
    runs = [("sgd", {}), ("momentum", {"momentum": 0.9})]
    for ax, (name, hyper) in zip(fig.subplots(1, 2), runs, strict=True):
        res = sweep(f, starts[0], name, grid={"x0": starts}, learning_rate=0.01, steps=1000,
                    tol=1e-4, **hyper)
        print(f"{name:9s}", res.counts())
        plot.basin_map(starts, res.params, res.status, f.minimizers, f=f, ax=ax,
                       title=f"{name}, lr 0.01" + (", momentum 0.9" if hyper else "")
                       + f": {n} x {n} starts")
    fig.suptitle("Himmelblau: which minimum does each start reach?")
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "basin_map.png", dpi=90)
    print("wrote", out / "basin_map.png")


if __name__ == "__main__":
    main()
