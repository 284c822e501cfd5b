"""Learning rate too small, too large: a sweep against the theory's boundary ``2/L``.

On a quadratic ``f(x) = 1/2 x^T A x`` gradient descent multiplies the error along each eigenvector
of ``A`` (eigenvalue ``lambda``) by ``1 - eta lambda`` per step, so it converges exactly when
``eta < 2/L`` with ``L`` the largest eigenvalue, and diverges above. This example builds ``A`` in
10 dimensions with eigenvalues from 0.1 to ``L = 10`` (a random rotation of a diagonal), sweeps
64 learning rates from 1e-3 to 1 over 8 random starts in one compiled program (``gdjax.sweep``),
and compares where the runs start to blow up with ``2/L = 0.2``.

Run: ``python examples/lr_sweep_quadratic.py [--out DIR]`` (or set ``GDJAX_EXAMPLES_OUT``);
``GDJAX_EXAMPLES_FAST=1`` sweeps a coarser grid.
"""

import argparse
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from gdjax import plot
from gdjax.sweep import Uniform, sweep

DIM, L = 10, 10.0


def quadratic(dim=DIM, smallest=0.1, largest=L, seed=0):
    """``f(x) = 1/2 x^T A x`` with eigenvalues log-spaced in ``[smallest, largest]``."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    a = jnp.asarray((q * np.geomspace(smallest, largest, dim)) @ q.T, dtype=jnp.float32)
    return lambda x: 0.5 * x @ a @ x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the pictures (default: "
                        "$GDJAX_EXAMPLES_OUT or ./out)",
                        default=Path(os.environ.get("GDJAX_EXAMPLES_OUT", "out")))
    out = parser.parse_args().out
    fast = bool(os.environ.get("GDJAX_EXAMPLES_FAST"))

    f = quadratic()
    lrs = np.geomspace(1e-3, 1.0, 24 if fast else 64)
    res = sweep(f, np.zeros(DIM, np.float32), "sgd", steps=500,
                grid={"learning_rate": lrs, "seed": np.arange(8),
                      "x0": Uniform(-1.0, 1.0)})  # one random start per seed
    print(res)
    print("status counts:", res.counts())

    # Empirically: the smallest learning rate at which some start ends above where it began.
    start_loss = np.asarray(res.history.loss[:, 0])
    worse = (res.status == "diverged") | (res.loss > start_loss)
    lr = res.grid["learning_rate"]
    boundary = lr[worse].min()
    print(f"theory: gradient descent diverges for lr > 2/L = {2 / L:g}")
    print(f"sweep:  the smallest learning rate that made a run worse is {boundary:.4g}; the "
          f"largest that helped every start is {lr[~worse & (lr < boundary)].max():.4g}")

    out.mkdir(parents=True, exist_ok=True)
    plot.loss_vs_learning_rate(
        lr, res.loss, res.status, boundary=2 / L, boundary_label="2/L (theory)",
        title=f"gradient descent on a quadratic with L = {L:g}: {len(res)} runs, 500 steps",
        path=out / "lr_sweep_quadratic.png", dpi=90)
    first = res.grid["seed"] == 0
    plot.loss_curves(res.history.step[first], res.history.loss[first], lr[first],
                     status=res.status[first], title="loss curves (one start) by learning rate",
                     path=out / "lr_sweep_loss_curves.png", dpi=90)
    print("wrote", out / "lr_sweep_quadratic.png", "and", out / "lr_sweep_loss_curves.png")


if __name__ == "__main__":
    main()
