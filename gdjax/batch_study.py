"""The seed's batch-size claim, measured: Keskar et al. (2017) at laptop scale.

Keskar et al. report that large-batch (LB) training converges to *sharp* minimisers and small-batch
(SB) training to *flat* ones, and that the flat ones generalise better. :func:`batch_size_study`
trains a small MLP on scikit-learn's bundled ``load_digits`` (1797 images, 8 x 8, 10 classes) with
Adam at a small and a large batch size over several seeds, all as one :func:`gdjax.sweep` (one
compiled program per batch size), then measures each solution:

* train and test accuracy and loss;
* the top eigenvalue of the Hessian of the training loss (:func:`gdjax.hessian_top_eigenvalue`);
* epsilon-sharpness, Keskar's metric 2.1, at ``epsilon = 1e-3`` and ``5e-4``
  (:func:`gdjax.epsilon_sharpness`, in float64);
* the training and test loss along the line from the SB to the LB solution of the first seed,
  ``alpha`` in ``[-1, 2]`` (the paper's Figure 3, :func:`gdjax.interpolate`).

Like the paper, the learning rate is the same for both batch sizes. Goyal et al. (2017) later
showed that scaling it with the batch size (``eta_LB = eta_SB * B_LB / B_SB``, the linear scaling
rule) closes much of the gap; ``scale_lr=True`` applies that rule.

References:
  N. S. Keskar et al., "On Large-Batch Training for Deep Learning: Generalization Gap and Sharp
  Minima", ICLR 2017. https://arxiv.org/abs/1609.04836
  P. Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017.
  https://arxiv.org/abs/1706.02677
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gdjax import inputs, sharpness
from gdjax.results import SweepResult
from gdjax.sweep import sweep

PyTree = Any

NOTE = (
    "The learning rate is the same for both batch sizes, as in Keskar et al. (2017); "
    "scale_lr=True applies Goyal et al.'s (2017) linear scaling rule instead."
)
NOTE_SCALED = (
    "The large batch's learning rate follows Goyal et al.'s (2017) linear scaling rule "
    "(lr x large / small); Keskar et al. (2017) kept one learning rate for both."
)


class StudyResult(NamedTuple):
    """What :func:`batch_size_study` measured.

    Attributes:
      rows: one dict per config: ``batch_size``, ``seed``, ``learning_rate``, ``train_acc``,
        ``test_acc``, ``train_loss``, ``test_loss``, ``top_eigenvalue``, ``sharpness_1e-3``,
        ``sharpness_5e-4`` (keys follow ``epsilons``), ``status``.
      sweep: the underlying :class:`gdjax.results.SweepResult`.
      alphas: the interpolation coefficients.
      line_train_loss, line_test_loss: loss along ``(1 - alpha) x_SB + alpha x_LB``.
      seconds: wall time of the study.
      note: how the learning rate was set (:data:`NOTE` or :data:`NOTE_SCALED`).
    """

    rows: list[dict[str, Any]]
    sweep: SweepResult
    alphas: np.ndarray
    line_train_loss: np.ndarray
    line_test_loss: np.ndarray
    seconds: float
    note: str

    def summary(self) -> list[dict[str, Any]]:
        """Mean and spread over seeds, one dict per batch size."""
        out = []
        for b in sorted({r["batch_size"] for r in self.rows}):
            group = [r for r in self.rows if r["batch_size"] == b]
            entry = {"batch_size": b, "seeds": len(group)}
            for key in group[0]:
                if key in ("batch_size", "seed", "status"):
                    continue
                values = np.array([r[key] for r in group], dtype=float)
                entry[key] = float(values.mean())
                entry[key + "_std"] = float(values.std())
            out.append(entry)
        return out


def load_digits_split(test_fraction: float = 0.3, seed: int = 0) -> tuple[dict, dict]:
    """scikit-learn's bundled digits as ``({"x", "y"}, {"x", "y"})`` train and test sets.

    Pixels are scaled to ``[0, 1]``; the split is a seeded random permutation.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the batch-size study needs scikit-learn: pip install 'gdjax[data]'"
        ) from err
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got test_fraction={test_fraction}")
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    return {"x": x[train], "y": y[train]}, {"x": x[test], "y": y[test]}


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> dict[str, jax.Array]:
    """Glorot-normal weights and zero biases for an MLP with layer sizes ``sizes``."""
    params = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        key, sub = jax.random.split(key)
        scale = np.sqrt(2.0 / (fan_in + fan_out))
        params[f"w{i}"] = scale * jax.random.normal(sub, (fan_in, fan_out))
        params[f"b{i}"] = jnp.zeros(fan_out)
    return params


def mlp_logits(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """``tanh`` hidden layers, linear output (smooth, so the Hessian is defined everywhere)."""
    layers = len(params) // 2
    for i in range(layers):
        x = x @ params[f"w{i}"] + params[f"b{i}"]
        if i < layers - 1:
            x = jnp.tanh(x)
    return x


def cross_entropy(params: dict[str, jax.Array], batch: dict[str, jax.Array]) -> jax.Array:
    """Mean softmax cross-entropy of the MLP on ``batch``."""
    logp = jax.nn.log_softmax(mlp_logits(params, batch["x"]))
    return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], axis=1))


def accuracy(params: dict[str, jax.Array], batch: dict[str, jax.Array]) -> jax.Array:
    """Fraction of ``batch`` classified correctly."""
    return jnp.mean(jnp.argmax(mlp_logits(params, batch["x"]), axis=-1) == batch["y"])


def batch_size_study(
    *,
    small: int = 32,
    large: int = 512,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 150,
    learning_rate: float = 1e-3,
    hidden: Sequence[int] = (64,),
    scale_lr: bool = False,
    epsilons: Sequence[float] = (1e-3, 5e-4),
    eigen_iters: int = 100,
    ascent_steps: int = 20,
    alphas: Sequence[float] | None = None,
    data: tuple[dict, dict] | None = None,
) -> StudyResult:
    """Train at a small and a large batch size over seeds; measure sharpness and generalisation.

    Args:
      small, large: the two batch sizes (the paper's LB is 10% of the data set or more; the
        default 512 is 41% of the 1258 training images).
      seeds: one config per seed and batch size; a seed fixes the initial weights (shared by both
        batch sizes) and the batch order.
      epochs: passes over the training set, the same for both batch sizes.
      learning_rate: Adam's step size for the small batch.
      hidden: hidden layer widths of the MLP.
      scale_lr: use ``learning_rate * large / small`` for the large batch (linear scaling).
      epsilons: box sizes of the epsilon-sharpness.
      eigen_iters: power-iteration cap for the top Hessian eigenvalue.
      ascent_steps: projected-ascent steps of the epsilon-sharpness maximisation.
      alphas: interpolation coefficients (default 31 points in ``[-1, 2]``).
      data: ``(train, test)`` dicts with ``"x"`` and ``"y"``; ``load_digits_split()`` by default.

    Returns:
      A :class:`StudyResult`.
    """
    small = inputs.positive_int("small", small)
    large = inputs.positive_int("large", large)
    epochs = inputs.positive_int("epochs", epochs)
    eigen_iters = inputs.positive_int("eigen_iters", eigen_iters)
    ascent_steps = inputs.positive_int("ascent_steps", ascent_steps)
    inputs.positive_number("learning_rate", learning_rate)
    if small >= large:
        raise ValueError(f"small must be below large, got small={small}, large={large}")
    seeds = _integers("seeds", seeds)
    if not seeds:
        raise ValueError(f"seeds must not be empty, got seeds={seeds!r}")
    hidden = _integers("hidden", hidden)
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden must hold positive layer widths, got hidden={hidden!r}")
    epsilons = list(epsilons)
    for e in epsilons:
        if not (isinstance(e, numbers.Real) and e > 0):
            raise ValueError(f"epsilons must be positive, got {e!r} in epsilons={epsilons!r}")
    alphas = np.linspace(-1.0, 2.0, 31) if alphas is None else np.asarray(alphas, float)
    if data is not None:
        _check_data(data)
    t0 = time.perf_counter()

    train, test = load_digits_split() if data is None else data
    train = jax.tree.map(jnp.asarray, train)
    test = jax.tree.map(jnp.asarray, test)
    n_train = train["x"].shape[0]
    if large > n_train:
        raise ValueError(
            f"large must be at most the training set size {n_train}, got large={large}"
        )
    sizes = [train["x"].shape[1], *hidden, int(jnp.max(train["y"])) + 1]
    inits = jax.vmap(lambda s: init_mlp(jax.random.key(s), sizes))(jnp.asarray(seeds))

    # One config per (batch size, seed); the start and the batch order follow the seed.
    batch_sizes = np.repeat([small, large], len(seeds))
    lrs = np.where(batch_sizes == large, learning_rate * (large / small if scale_lr else 1.0),
                   learning_rate)
    config_seeds = np.tile(seeds, 2)
    starts = jax.tree.map(lambda a: jnp.concatenate([a, a]), inits)
    res = sweep(
        cross_entropy, jax.tree.map(lambda a: a[0], inits), "adam", data=train, epochs=epochs,
        grid={"batch_size": batch_sizes, "learning_rate": lrs, "seed": config_seeds,
              "x0": starts},
        zip_axes=[("batch_size", "learning_rate", "seed", "x0")],
    )

    train_loss = lambda p: cross_entropy(p, train)
    measure = jax.jit(jax.vmap(lambda p: (
        accuracy(p, train), accuracy(p, test), cross_entropy(p, train), cross_entropy(p, test),
        sharpness.hessian_top_eigenvalue(train_loss, p, num_iters=eigen_iters).eigenvalue,
    )))
    train_acc, test_acc, tr_loss, te_loss, eig = (np.asarray(a) for a in measure(res.params))

    with jax.enable_x64(True):
        train64 = {"x": jnp.asarray(train["x"], jnp.float64), "y": train["y"]}
        params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), res.params)
        loss64 = lambda p: cross_entropy(p, train64)
        sharp = {
            e: np.asarray(jax.vmap(lambda p, e=e: sharpness.epsilon_sharpness(
                loss64, p, e, ascent_steps=ascent_steps).sharpness)(params64))
            for e in epsilons
        }

    rows = []
    for i in range(len(res)):
        row = {
            "batch_size": int(batch_sizes[i]), "seed": int(config_seeds[i]),
            "learning_rate": float(lrs[i]), "train_acc": float(train_acc[i]),
            "test_acc": float(test_acc[i]), "train_loss": float(tr_loss[i]),
            "test_loss": float(te_loss[i]), "top_eigenvalue": float(eig[i]),
        }
        row.update({f"sharpness_{e:g}": float(sharp[e][i]) for e in epsilons})
        row["status"] = str(res.status[i])
        rows.append(row)

    sb, lb = (jax.tree.map(lambda a, i=i: a[i], res.params) for i in (0, len(seeds)))
    line = jnp.asarray(alphas, jnp.float32)
    line_train = sharpness.interpolate(train_loss, sb, lb, line)
    line_test = sharpness.interpolate(lambda p: cross_entropy(p, test), sb, lb, line)
    return StudyResult(
        rows=rows, sweep=res, alphas=np.asarray(alphas), line_train_loss=np.asarray(line_train),
        line_test_loss=np.asarray(line_test), seconds=time.perf_counter() - t0,
        note=NOTE_SCALED if scale_lr else NOTE,
    )


def _integers(name: str, values: Any) -> list[int]:
    values = list(values)
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
        raise TypeError(f"{name} must hold integers, got {name}={values!r}")
    return [int(v) for v in values]


def _check_data(data: Any) -> None:
    """``(train, test)``: dicts of ``x``, ``(N, features)`` floats, and ``y``, ``(N,)`` int
    labels."""
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise ValueError(
            f"data must be a (train, test) pair of dicts with keys 'x' and 'y', got "
            f"data of type {type(data).__name__}"
            + (f" with {len(data)} parts" if isinstance(data, tuple | list) else "")
        )
    features = set()
    for i, part in enumerate(data):
        where = f"data[{i}]"
        if not isinstance(part, Mapping) or not {"x", "y"} <= set(part):
            keys = sorted(map(str, part)) if isinstance(part, Mapping) else type(part).__name__
            raise ValueError(f"{where} must be a dict with keys 'x' and 'y', got {keys}")
        x, y = np.shape(part["x"]), np.shape(part["y"])
        if len(x) != 2 or len(y) != 1 or x[0] != y[0] or x[0] == 0:
            raise ValueError(
                f"{where}['x'] and {where}['y'] must have the same number of samples, x of shape "
                f"(samples, features) and y of shape (samples,), got shapes {x} and {y}"
            )
        x_dtype, y_dtype = np.asarray(part["x"]).dtype, np.asarray(part["y"]).dtype
        if not np.issubdtype(x_dtype, np.floating):
            raise TypeError(f"{where}['x'] must hold floats, got dtype {x_dtype}")
        if not np.issubdtype(y_dtype, np.integer):
            raise TypeError(f"{where}['y'] must hold integer class labels, got dtype {y_dtype}")
        features.add(x[1])
    if len(features) > 1:
        raise ValueError(f"data's train and test x must have the same features, got {features}")
