"""Checking user input at call time, so bad arguments fail with a clear message, not deep in JAX.

Every message names the argument and echoes its value: "steps must be a positive integer, got
steps=0". Numerical trouble at run time (NaN, divergence) is not an input error: it becomes a
status in the result.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int, or ``ValueError`` unless it is a positive integer."""
    if type(value) is int and value >= 1:
        return value  # the common case, without the ABC check below
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
    return int(value)


def flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool, else ``TypeError``."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {name}={value!r}")
    return bool(value)


def optional_tolerance(name: str, value: Any) -> Any:
    """``None``, a finite non-negative float, or a traced scalar (checked when concrete)."""
    if value is None:
        return None
    if isinstance(value, jax.core.Tracer):
        if value.shape != () or not jnp.issubdtype(value.dtype, jnp.floating):
            raise TypeError(f"{name} must be a real scalar, got a traced {value.dtype} "
                            f"array of shape {value.shape}")
        return value
    if isinstance(value, (jax.Array, np.ndarray)) and value.shape == ():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number or None, got {name}={value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {name}={value!r}")
    return float(value)


class static:  # noqa: N801 (a wrapper read like a function call)
    """A callable as a ``jax.jit`` static argument: its own hash and equality when it has them
    (functions, ``functools.partial`` of them), identity otherwise (an unhashable callable)."""

    __slots__ = ("key", "value")

    def __init__(self, value: Any):
        self.value = value
        try:
            hash(value)
            self.key = value
        except TypeError:
            self.key = _Identity(value)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, static) and self.key == other.key


class _Identity:
    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Identity) and other.obj is self.obj


def float_params(name: str, tree: PyTree, *, keep_numpy: bool = False) -> PyTree:
    """Check that ``tree`` is a non-empty pytree of floating arrays; return it as jax arrays.

    Python floats and lists become arrays of JAX's default float dtype; float64 NumPy input stays
    float64 when called inside :func:`precision`. With ``keep_numpy`` NumPy leaves are returned
    as they are (for a caller that only hands them to a jitted program).
    """
    if isinstance(tree, jax.Array) and _floating(tree.dtype) and tree.size > 0:
        return tree  # the common case, checked in a microsecond
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError(f"{name} must contain at least one array, got {name}={tree!r}")
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = np.result_type(leaf) if not hasattr(leaf, "dtype") else leaf.dtype
        if isinstance(leaf, float):
            continue
        if not jnp.issubdtype(dtype, jnp.floating):
            where = jax.tree_util.keystr(path) or "(the array itself)"
            raise TypeError(
                f"{name} must hold floating-point arrays; leaf {where} has dtype {dtype} "
                f"(convert it, e.g. with .astype(float)), got {name}={_short(tree)}"
            )
        if np.size(leaf) == 0:
            where = jax.tree_util.keystr(path) or "(the array itself)"
            raise ValueError(f"{name} must not hold empty arrays; leaf {where} has size 0")
    kept = (jax.Array, np.ndarray) if keep_numpy else jax.Array
    return jax.tree.map(lambda x: x if isinstance(x, kept) else jnp.asarray(x), tree)


@functools.lru_cache(maxsize=64)
def _floating(dtype: np.dtype) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.floating))


def scalar_function(name: str, f: Callable, *args: Any) -> jax.ShapeDtypeStruct:
    """``TypeError``/``ValueError`` unless ``f(*args)`` is a real scalar (checked abstractly).

    Returns the output's shape and dtype.
    """
    if not callable(f):
        raise TypeError(f"{name} must be callable, got {name}={f!r}")
    out = abstract(f, *args)
    shape = getattr(out, "shape", None)
    if shape != ():
        raise ValueError(
            f"{name} must return a scalar, got output of shape {shape} "
            f"(reduce it, e.g. with jnp.sum or jnp.mean)"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"{name} must return a floating-point scalar, got dtype {out.dtype}")
    return out


def abstract(f: Callable, *args: Any) -> Any:
    """``jax.eval_shape(f, *args)``, cached per ``f`` and argument shapes and dtypes.

    Tracing costs milliseconds; repeated calls with new values of the same shapes reuse it. An
    unhashable ``f`` is traced every time.
    """
    if len(args) == 1 and isinstance(args[0], jax.Array):  # the common cases, quickly
        signature = (_ONE_ARRAY, ((args[0].shape, args[0].dtype),))
    elif len(args) == 1 and isinstance(args[0], np.ndarray):
        signature = (_ONE_ARRAY, ((args[0].shape, jax.dtypes.canonicalize_dtype(args[0].dtype)),))
    else:
        leaves, treedef = jax.tree.flatten(args)
        signature = (treedef, tuple(
            (x.shape, x.dtype) if isinstance(x, jax.Array)
            else (x.shape, jax.dtypes.canonicalize_dtype(x.dtype)) if isinstance(x, np.ndarray)
            else (jnp.shape(x), jnp.result_type(x))
            for x in leaves
        ))
    try:
        return _abstract(f, signature)
    except TypeError:
        return jax.eval_shape(f, *args)


_ONE_ARRAY = jax.tree.structure((0,))


@functools.lru_cache(maxsize=512)
def _abstract(f: Callable, signature: tuple) -> Any:
    treedef, avals = signature
    args = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in avals])
    return jax.eval_shape(f, *args)


_WIDE = (np.float64, np.complex128)


def precision(*trees: PyTree) -> contextlib.AbstractContextManager:
    """A context that runs in float64 when any input leaf is float64, else does nothing.

    gdjax never flips ``jax_enable_x64`` globally; a float64 input is honoured by entering
    ``jax.enable_x64(True)`` for the duration of the call.
    """
    if len(trees) == 1 and isinstance(trees[0], jax.Array):  # the common case, quickly
        wide = trees[0].dtype in _WIDE
    else:
        wide = any(
            getattr(leaf, "dtype", None) in _WIDE
            for tree in trees
            for leaf in jax.tree.leaves(tree)
        )
    if wide and not jax.config.jax_enable_x64:
        return jax.enable_x64(True)
    return contextlib.nullcontext()


def _short(tree: PyTree, limit: int = 80) -> str:
    text = repr(tree)
    return text if len(text) <= limit else text[: limit - 3] + "..."
