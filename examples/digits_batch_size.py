"""Mini-batch training on scikit-learn's digits, sweeping the batch size.

The seed's notes call the batch size a real hyperparameter: Keskar et al. (ICLR 2017,
https://arxiv.org/abs/1609.04836) found that large batches tend to end in *sharp* minimisers and
small ones in *flat* minimisers, which generalise better. This example lets you look at that on a
small problem: it trains one MLP (64 -> 32 -> 10, tanh) on the 8x8 digits bundled with
scikit-learn (1797 images, no download) with ``gdjax.fit`` at several batch sizes, from nearly
stochastic (8) to full batch, for about the same number of steps with the same Adam learning rate,
then measures each solution: train loss, test accuracy, Keskar's epsilon-sharpness and the top
eigenvalue of the loss Hessian. (With equal steps, a larger batch also sees more data, so it
trains further; Keskar et al. compare solutions trained to similar train loss on large networks.)

Run: ``python examples/digits_batch_size.py [--out DIR]`` (or set ``GDJAX_EXAMPLES_OUT``);
``GDJAX_EXAMPLES_FAST=1`` trains fewer steps at fewer batch sizes.
"""

import argparse
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from gdjax import plot
from gdjax.batching import fit
from gdjax.sharpness import epsilon_sharpness, hessian_top_eigenvalue


def init_mlp(key, sizes=(64, 32, 10)):
    """Glorot-uniform weights and zero biases."""
    params = []
    keys = jax.random.split(key, len(sizes) - 1)
    for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True):
        limit = np.sqrt(6.0 / (n_in + n_out))
        params.append({"w": jax.random.uniform(k, (n_in, n_out), minval=-limit, maxval=limit),
                       "b": jnp.zeros(n_out)})
    return params


def logits(params, x):
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def loss(params, batch):
    """Mean cross-entropy of a batch ``(images, labels)``."""
    x, y = batch
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits(params, x)), y[:, None], 1))


def accuracy(params, x, y):
    return jnp.mean(jnp.argmax(logits(params, x), axis=-1) == y)


def padded(rows):
    """Rows of different lengths as one array, NaN-padded (matplotlib skips NaN)."""
    out = np.full((len(rows), max(len(r) for r in rows)), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the pictures (default: "
                        "$GDJAX_EXAMPLES_OUT or ./out)",
                        default=Path(os.environ.get("GDJAX_EXAMPLES_OUT", "out")))
    out = parser.parse_args().out
    fast = bool(os.environ.get("GDJAX_EXAMPLES_FAST"))
    budget = 300 if fast else 2000  # steps per batch size, rounded up to whole epochs

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target.astype(np.int32), test_size=0.2, random_state=0, stratify=digits.target)
    n = len(x_train)
    batch_sizes = (16, n) if fast else (8, 32, 128, n)
    data = (jnp.asarray(x_train), jnp.asarray(y_train))
    params0 = init_mlp(jax.random.key(0))
    test = (jnp.asarray(x_test), jnp.asarray(y_test))

    def metrics(p):
        return {"test_loss": loss(p, test), "test_accuracy": accuracy(p, *test)}

    rows = []
    steps, histories = [], []
    for batch_size in batch_sizes:
        epochs = -(-budget // (n // batch_size))
        res = fit(loss, params0, data, optimizer="adam", learning_rate=1e-3,
                  batch_size=batch_size, epochs=epochs, seed=0, eval_fn=metrics,
                  record_every=budget // 20)
        train_loss = lambda p: loss(p, data)  # noqa: E731 (the full-batch loss at the solution)
        sharp = epsilon_sharpness(train_loss, res.params, 1e-3, ascent_steps=20)
        top = hessian_top_eigenvalue(train_loss, res.params, num_iters=50)
        rows.append((batch_size, float(res.loss), float(accuracy(res.params, *test)),
                     float(sharp.sharpness), float(top.eigenvalue)))
        steps.append(np.asarray(res.history.step))
        histories.append(np.asarray(res.history.metrics["test_loss"]))
        print(f"batch {batch_size:5d}: train loss {rows[-1][1]:.4f}  test acc {rows[-1][2]:.3f}  "
              f"sharpness {rows[-1][3]:8.3f} %  top Hessian eigenvalue {rows[-1][4]:8.3f}  "
              f"({res.steps} steps)")

    sizes, _, acc, sharpness, top = (np.array(c) for c in zip(*rows, strict=True))
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    plot.loss_curves(padded(steps), padded(histories), sizes, ax=left, label="batch size",
                     ylabel="test cross-entropy", title="digits MLP, Adam lr=1e-3")
    right.plot(sizes, sharpness, "o-", color="#d62728", label="epsilon-sharpness (%)")
    right.plot(sizes, top, "s-", color="#1f77b4", label="top Hessian eigenvalue")
    right.set(xscale="log", yscale="log", xlabel="batch size",
              title="sharpness of the solution (Keskar et al. 2017)")
    for s, a, y in zip(sizes, acc, sharpness, strict=True):
        right.annotate(f"test acc {a:.3f}", (s, y), textcoords="offset points", xytext=(4, 6),
                       fontsize="small")
    right.legend(loc="lower left", fontsize="small")
    right.grid(True, alpha=0.3)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "digits_batch_size.png", dpi=90)
    print("wrote", out / "digits_batch_size.png")


if __name__ == "__main__":
    main()
