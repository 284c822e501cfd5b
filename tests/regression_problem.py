"""A small linear-regression problem shared by the ``fit`` tests of several files."""

import jax
import jax.numpy as jnp


def linear_loss(p, batch):
    X, y = batch
    return jnp.mean((X @ p["w"] + p["b"] - y) ** 2)


def regression():
    """48 samples of ``y = X @ [1, -2, 0.5] + 0.3`` and zero parameters to start from."""
    X = jax.random.normal(jax.random.key(0), (48, 3))
    y = X @ jnp.array([1.0, -2.0, 0.5]) + 0.3
    return (X, y), {"w": jnp.zeros(3), "b": jnp.zeros(())}
