"""Stochastic, mini-batch and batch gradient descent on scikit-learn's digits.

The seed's notes describe three variants that differ only in how many samples feed each gradient:
stochastic (one sample), mini-batch (16, 32, 64, 128...) and batch (the whole training set). This
example trains the same small MLP (64 -> 32 -> 10, tanh, from ``gdjax.batch_study``) on the 8x8
digits bundled with scikit-learn (1797 images, no download) with ``gdjax.fit`` at batch sizes from
1 to the full training set, for the same number of epochs and the same Adam learning rate, and
draws the test loss twice: per epoch (every variant has seen the same data) and per update step
(every variant has taken the same number of steps). Per epoch the small batches win, because they
take many more steps; per step the large batches win, because each step follows a better gradient.

Then it picks the learning rate the way a hyperparameter search would: one :func:`gdjax.sweep`
of learning rate x seed at batch size 32 that records the test accuracy (``eval_fn``), printed
as :meth:`~gdjax.SweepResult.summary` by learning rate (mean and spread over the seeds) and
``best("test_accuracy", "max", reduce="mean")``.

(For the seed's other batch-size claim, Keskar et al.'s sharp and flat minima, see
``examples/keskar_study.py``.)

Run: ``python examples/digits_batch_size.py [--out DIR]`` (or set ``GDJAX_EXAMPLES_OUT``);
``GDJAX_EXAMPLES_FAST=1`` trains fewer epochs at fewer batch sizes.
"""

import argparse
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

import gdjax
from gdjax import plot
from gdjax.batch_study import accuracy, cross_entropy, init_mlp, load_digits_split
from gdjax.batching import fit


def padded(rows):
    """Rows of different lengths as one array, NaN-padded (matplotlib skips NaN)."""
    out = np.full((len(rows), max(len(r) for r in rows)), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the picture (default: "
                        "$GDJAX_EXAMPLES_OUT or ./out)",
                        default=Path(os.environ.get("GDJAX_EXAMPLES_OUT", "out")))
    out = parser.parse_args().out
    fast = bool(os.environ.get("GDJAX_EXAMPLES_FAST"))
    epochs = 3 if fast else 20

    train, test = load_digits_split(test_fraction=0.2)
    n = len(train["x"])
    batch_sizes = (16, n) if fast else (1, 8, 32, 128, n)
    data = jax.tree.map(jnp.asarray, train)
    test = jax.tree.map(jnp.asarray, test)
    params0 = init_mlp(jax.random.key(0), (64, 32, 10))

    def test_loss(p):
        return cross_entropy(p, test)

    steps, curves = [], []
    for batch_size in batch_sizes:
        started = time.perf_counter()
        per_epoch = n // batch_size
        res = fit(cross_entropy, params0, data, optimizer="adam", learning_rate=1e-3,
                  batch_size=batch_size, epochs=epochs, seed=0, eval_fn=test_loss,
                  record_every=max(1, per_epoch // 8))
        seconds = time.perf_counter() - started
        kind = {1: "stochastic", n: "batch"}.get(batch_size, "mini-batch")
        print(f"{kind:10s} batch {batch_size:4d}: {res.steps:6d} steps, train loss "
              f"{float(res.loss):.4f}, test accuracy {float(accuracy(res.params, test)):.3f} "
              f"({seconds:.1f} s with compilation)")
        steps.append(np.asarray(res.history.step))
        curves.append(np.asarray(res.history.metrics))

    sizes = np.array(batch_sizes)
    steps, losses = padded(steps), padded(curves)
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    by_epoch, by_step = fig.subplots(1, 2)
    plot.loss_curves(steps / (n // sizes)[:, None], losses, sizes, ax=by_epoch,
                     label="batch size", xlabel="epoch", ylabel="test cross-entropy",
                     title="per epoch: the same data seen")
    plot.loss_curves(np.maximum(steps, 1), losses, sizes, ax=by_step, label="batch size",
                     xlabel="update steps (log scale)", ylabel="test cross-entropy",
                     title="per step: the same number of updates")
    by_step.set_xscale("log")
    fig.suptitle(f"digits MLP, Adam lr 1e-3, {epochs} epochs: stochastic, mini-batch and batch GD")
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "digits_batch_size.png", dpi=90)
    print("wrote", out / "digits_batch_size.png")

    # learning rate x seed, judged by test accuracy: mean and spread over seeds, then the best
    lrs = [1e-3, 1e-2] if fast else [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
    res = gdjax.sweep(cross_entropy, params0, "adam", data=data, batch_size=32,
                      epochs=1 if fast else 10, grid={"learning_rate": lrs, "seed": [0, 1, 2]},
                      eval_fn=lambda p: {"test_accuracy": accuracy(p, test)}, progress=False)
    table = res.summary(by=["learning_rate"], metrics=["test_accuracy"])
    for i, lr in enumerate(table["learning_rate"]):
        print(f"batch 32, learning rate {lr:g}: test accuracy "
              f"{table['test_accuracy mean'][i]:.3f} +- {table['test_accuracy std'][i]:.3f} "
              f"(min {table['test_accuracy min'][i]:.3f}, {table['configs'][i]} seeds)")
    best = res.best("test_accuracy", "max", reduce="mean")
    print(f"best learning rate by mean test accuracy over seeds: "
          f"{best.config['learning_rate']:g} ({best.value:.3f})")


if __name__ == "__main__":
    main()
