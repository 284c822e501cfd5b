"""Optimiser race: SGD, Momentum, Nesterov, Adagrad, RMSProp and Adam on Rosenbrock's valley.

Every optimiser starts at the classic ``(-1.2, 1)`` and runs 1000 steps with its own learning rate,
picked from a log grid from 1e-4 to 1 as the one whose loss ends lowest without bouncing (what
``gdjax race`` does by itself: ``gdjax race rosenbrock``). The trajectories are drawn over the
function's log-spaced contours, beside the loss along each: plain SGD crawls along the curved
valley floor, momentum and Adam reach the minimiser at ``(1, 1)``.

Run: ``python examples/optimizer_race.py [--out DIR]`` (or set ``GDJAX_EXAMPLES_OUT``);
``GDJAX_EXAMPLES_FAST=1`` runs fewer steps.
"""

import argparse
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from gdjax import functions, plot
from gdjax.descent import minimize

LEARNING_RATES = {
    "sgd": 1.8e-3,
    "momentum": 3.2e-3,
    "nesterov": 1e-3,
    "adagrad": 1.0,
    "rmsprop": 5.6e-3,
    "adam": 0.32,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the pictures (default: "
                        "$GDJAX_EXAMPLES_OUT or ./out)",
                        default=Path(os.environ.get("GDJAX_EXAMPLES_OUT", "out")))
    out = parser.parse_args().out
    steps = 200 if os.environ.get("GDJAX_EXAMPLES_FAST") else 1000

    f = functions.rosenbrock
    x0 = jnp.asarray(f.start, dtype=jnp.float32)
    paths = {}
    for name, lr in LEARNING_RATES.items():
        res = minimize(f, x0, name, learning_rate=lr, steps=steps, record_params=True)
        distance = float(np.linalg.norm(np.asarray(res.params) - f.minimizers[0]))
        print(f"{name:9s} lr={lr:<7g} loss={float(res.loss):.3e}  |x - x*|={distance:.2e}  "
              f"{res.status}")
        paths[f"{name} (lr {lr:g}): {float(res.loss):.1e}"] = res.history.params

    figure = out / "optimizer_race.png"
    plot.trajectories(f, paths, steps=res.history.step, path=figure, dpi=80,
                      title=f"Rosenbrock, {steps} steps from (-1.2, 1) (legend: final loss)")
    print("wrote", figure)


if __name__ == "__main__":
    main()
