"""Optimiser race: SGD, Momentum, Nesterov, Adagrad, RMSProp and Adam on Rosenbrock's valley.

Every optimiser starts at the classic ``(-1.2, 1)`` and runs 1000 steps with its own learning rate,
picked by :func:`gdjax.race` from a log grid from 1e-5 to 10 as the one whose loss stays lowest
over the last tenth of the run (the same call ``gdjax race rosenbrock`` makes). The trajectories
are drawn over the function's log-spaced contours: plain SGD crawls along the curved valley
floor, momentum and Adam reach the minimiser at ``(1, 1)``.

Run: ``python examples/optimizer_race.py [--out DIR]`` (or set ``GDJAX_EXAMPLES_OUT``);
``GDJAX_EXAMPLES_FAST=1`` runs fewer steps.
"""

import argparse
import os
from pathlib import Path

import numpy as np

import gdjax
from gdjax import functions, plot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the pictures (default: "
                        "$GDJAX_EXAMPLES_OUT or ./out)",
                        default=Path(os.environ.get("GDJAX_EXAMPLES_OUT", "out")))
    out = parser.parse_args().out
    steps = 200 if os.environ.get("GDJAX_EXAMPLES_FAST") else 1000

    f = functions.rosenbrock
    result = gdjax.race(f, np.float32(f.start), steps=steps)
    paths = {}
    for r in result.rows:
        print(f"{r['optimizer']:9s} lr={r['learning_rate']:<8.3g} loss={r['loss']:.3e}  "
              f"|x - x*|={r['distance_to_minimizer']:.2e}  {r['status']}")
        label = f"{r['optimizer']} (lr {r['learning_rate']:.3g}): {r['loss']:.1e}"
        paths[label] = result.paths[r["optimizer"]]

    figure = out / "optimizer_race.png"
    plot.trajectories(f, paths, steps=result.steps, path=figure, dpi=80,
                      title=f"Rosenbrock, {steps} steps from (-1.2, 1) (legend: final loss)")
    print("wrote", figure)


if __name__ == "__main__":
    main()
