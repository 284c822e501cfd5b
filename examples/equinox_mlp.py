"""An equinox model trained, swept and checked with gdjax, passed as it is.

gdjax takes any pytree as its parameters: an ``eqx.Module`` goes to :func:`gdjax.check_grads`,
:func:`gdjax.fit` and :func:`gdjax.sweep` (and :func:`gdjax.hessian_top_eigenvalue`) unchanged. Its
floating-point arrays (weights and biases) are trained; everything else in it (the activation
function, the dropout rate, the ``inference`` flag) is carried along, and the results come back
as the same module class. With ``rng=True`` the loss is called with ``key=``, a PRNG key new at
every step and drawn from ``seed``, which is what ``eqx.nn.Dropout`` needs: the same seed gives
the same run, and a sweep over ``seed`` varies the dropout masks as well as the batch order.

On the 8x8 digits bundled with scikit-learn (1797 images, no download), a 64-64-10 MLP with
dropout is

1. checked: ``check_grads`` compares its autodiff gradient with finite differences;
2. trained: ``fit`` with Adam, mini-batches of 32, dropout keys from the seed (the same seed
   gives the same run, another seed another one);
3. swept: one ``sweep`` of learning rate x seed that records the test accuracy every epoch
   (``eval_fn``), summarised by learning rate (mean and spread over the seeds) and drawn.

Run: ``python examples/equinox_mlp.py`` (pictures into ``$GDJAX_EXAMPLES_OUT`` or the current
folder); ``GDJAX_EXAMPLES_FAST=1`` trains fewer epochs over fewer learning rates and seeds.
"""

import os
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

import gdjax
from gdjax import plot
from gdjax.batch_study import load_digits_split


class MLP(eqx.Module):
    """64 -> 64 -> 10 on a batch of images, tanh, dropout on the hidden layer when given a key."""

    hidden: eqx.nn.Linear
    dropout: eqx.nn.Dropout
    out: eqx.nn.Linear

    def __init__(self, key, width=64, rate=0.2):
        k1, k2 = jax.random.split(key)
        self.hidden = eqx.nn.Linear(64, width, key=k1)
        self.dropout = eqx.nn.Dropout(rate)
        self.out = eqx.nn.Linear(width, 10, key=k2)

    def __call__(self, x, key=None):
        h = jnp.tanh(jax.vmap(self.hidden)(x))
        h = self.dropout(h, key=key, inference=key is None)  # one mask for the whole batch
        return jax.vmap(self.out)(h)


def cross_entropy(model, batch, *, key=None):
    logp = jax.nn.log_softmax(model(batch["x"], key))
    return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], axis=1))


def accuracy(model, batch):
    return jnp.mean(jnp.argmax(model(batch["x"]), axis=-1) == batch["y"])


def main() -> None:
    out = Path(os.environ.get("GDJAX_EXAMPLES_OUT", "."))
    fast = bool(os.environ.get("GDJAX_EXAMPLES_FAST"))
    epochs = 2 if fast else 15
    learning_rates = [3e-3, 3e-2] if fast else [1e-3, 3e-3, 1e-2, 3e-2]
    seeds = [0, 1] if fast else [0, 1, 2]

    train, test = (jax.tree.map(jnp.asarray, d) for d in load_digits_split(test_fraction=0.2))
    model = MLP(jax.random.key(0))

    # 1. the gradient, checked against finite differences (without dropout: a deterministic loss)
    few = jax.tree.map(lambda a: a[:64], train)
    print(gdjax.check_grads(cross_entropy, model, args=(few,), modes=("rev",)))

    # 2. the module in, the module out; dropout keys drawn from the seed: a seed repeats its run
    started = time.perf_counter()
    runs = [gdjax.fit(cross_entropy, model, train, rng=True, optimizer="adam", learning_rate=3e-3,
                      batch_size=32, epochs=epochs, seed=seed) for seed in (0, 0, 1)]
    trained = runs[0].params
    print(f"fit: {type(trained).__name__} back after {runs[0].steps} steps "
          f"({time.perf_counter() - started:.1f} s for three runs, one compilation), test "
          f"accuracy {float(accuracy(trained, test)):.3f}; train loss by seed: 0 "
          f"{float(runs[0].loss):.5f}, 0 again {float(runs[1].loss):.5f}, 1 "
          f"{float(runs[2].loss):.5f}")

    # 3. learning rate x seed in one compiled program, judged by test accuracy
    sweep = gdjax.sweep(cross_entropy, model, "adam", data=train, batch_size=32, epochs=epochs,
                        rng=True, grid={"learning_rate": learning_rates, "seed": seeds},
                        eval_fn=lambda m: {"test_accuracy": accuracy(m, test)}, progress=False)
    table = sweep.summary(by=["learning_rate"], metrics=["test_accuracy"])
    for i, lr in enumerate(table["learning_rate"]):
        print(f"learning rate {lr:g}: test accuracy {table['test_accuracy mean'][i]:.3f} +- "
              f"{table['test_accuracy std'][i]:.3f} over {table['configs'][i]} seeds")
    best = int(np.argmax(table["test_accuracy mean"]))
    print(f"best learning rate by mean test accuracy: {table['learning_rate'][best]:g}")

    lr = np.asarray(sweep.grid["learning_rate"])
    acc = np.asarray(sweep.history.metrics["test_accuracy"])
    per_epoch = len(train["y"]) // 32
    step = np.asarray(sweep.history.step)
    epoch = (step[0] if step.ndim == 2 else step) / per_epoch
    rates = np.unique(lr)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    plot.loss_curves(epoch, np.stack([acc[lr == r].mean(0) for r in rates]), rates,
                     ax=ax, xlabel="epoch", ylabel="test accuracy (mean over seeds)",
                     title=f"equinox MLP with dropout on digits, Adam, {len(seeds)} seeds")
    ax.set_yscale("linear")  # an accuracy, not a loss
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "equinox_mlp.png", dpi=90)
    print("wrote", out / "equinox_mlp.png")


if __name__ == "__main__":
    main()
