"""Checking user input at call time, so bad arguments fail with a clear message, not deep in JAX.

Every message names the argument and echoes its value: "steps must be a positive integer, got
steps=0". Numerical trouble at run time (NaN, divergence) is not an input error: it becomes a
status in the result.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import numbers
import weakref
from collections.abc import Callable, Mapping
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


def flag(name: str, value: Any, optional: bool = False) -> bool | None:
    """``value`` if it is a bool (or ``None``, when ``optional``), else ``TypeError``."""
    if optional and value is None:
        return None
    if not isinstance(value, (bool, np.bool_)):
        allowed = "True, False or None" if optional else "True or False"
        raise TypeError(f"{name} must be {allowed}, got {name}={value!r}")
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


def positive_number(name: str, value: Any) -> Any:
    """``value`` unless it is a concrete number that is not positive and finite (``ValueError``)
    or not a real number at all (``TypeError``); a traced value or a schedule passes as it is."""
    if callable(value) or isinstance(value, jax.core.Tracer):
        return value
    number = value.item() if isinstance(value, jax.Array | np.ndarray | np.generic) and np.ndim(
        value) == 0 else value
    if isinstance(number, bool) or not isinstance(number, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {name}={_short(value)}")
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a positive finite number, got {name}={value!r}")
    return value


def hyperparameter(name: str, value: Any) -> None:
    """``TypeError`` unless ``value`` is ``None``, a schedule (a callable) or real numbers (a
    number, an array or a traced value); ranges are the optimiser's to check."""
    if value is None or type(value) is float or type(value) is int or callable(value):
        return
    try:
        dtype = value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype
    except ValueError:  # a ragged list
        dtype = np.dtype(object)
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise TypeError(
            f"{name} must be a number or an optax schedule (step -> value), got "
            f"{name}={_short(value)}" + (f" of dtype {dtype}" if hasattr(value, "dtype") else "")
        )


MIN_MEMORY_BUDGET = 1 << 10


def memory_budget(value: Any) -> int:
    """``memory_budget`` in bytes; values under 1 KiB are refused as a unit mistake."""
    value = positive_int("memory_budget", value)
    if value < MIN_MEMORY_BUDGET:
        raise ValueError(
            f"memory_budget is a number of bytes and at least {MIN_MEMORY_BUDGET}, got "
            f"memory_budget={value} (bytes); e.g. memory_budget=1 << 30 is 1 GiB"
        )
    return value


_NOT_HYPERPARAMETERS = ("x0", "seed", "batch_size")


def injected(name: str, tx: Any, axes: Any, params: PyTree) -> None:
    """``ValueError`` when grid ``axes`` name hyperparameters of ``tx``, an optax
    transformation whose state holds none (one not built with ``optax.inject_hyperparams``)."""
    if isinstance(tx, str) or not hasattr(tx, "init") or not isinstance(axes, Mapping):
        return
    wanted = [a for a in axes if a not in _NOT_HYPERPARAMETERS]
    if not wanted:
        return
    try:
        state = jax.eval_shape(tx.init, params)
    except Exception:  # noqa: BLE001 (a bad start or optimizer: their own checks report it)
        return
    if not isinstance(getattr(state, "hyperparams", None), Mapping):
        raise ValueError(
            f"grid axis {wanted[0]!r} must be a hyperparameter held in the optimizer's state, "
            f"but {name}={_short(tx)} holds none: build it with optax.inject_hyperparams, e.g. "
            "optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), or pass a name such as 'sgd'"
        )


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
    as they are (for a caller that only hands them to a jitted program). For a caller that can
    carry non-array leaves through, :func:`trainable` splits them off instead of refusing them.
    """
    train, rebuild = trainable(name, tree, keep_numpy=keep_numpy)
    if rebuild is not None:
        path, leaf = rebuild.first_static()
        raise TypeError(
            f"{name} must hold floating-point arrays; leaf {path} {_is(leaf)}"
            f"{_dtype_hint(leaf)}, got {name}={_short(tree)}"
        )
    return train


def trainable(name: str, tree: PyTree, *, keep_numpy: bool = False
              ) -> tuple[PyTree, Rebuild | None]:
    """Split ``tree`` into its trained part and the rest (the static leaves).

    The trained leaves are the inexact arrays (the ``equinox.is_inexact_array`` rule: jax or
    NumPy arrays of a floating or complex dtype) and Python floats held in plain containers
    (``1.0``, ``[-3.0, 4.0]``, ``{"w": 0.5}``); everything else (an ``equinox`` module's
    activation function or dropout rate, ``None``, Python ints and bools, integer arrays,
    strings) is carried unchanged.

    Returns ``(train, rebuild)``: ``train`` has the structure of ``tree`` with ``None`` in place of
    every leaf that is not trained (as ``equinox.partition`` does), its trained leaves converted
    as :func:`float_params` does (Python floats become arrays; ``keep_numpy`` keeps NumPy
    leaves). ``rebuild`` is ``None`` when every leaf is trained, else a :class:`Rebuild` with
    ``rebuild(train)`` the full tree. ``ValueError`` when ``tree`` holds no leaf at all or an
    empty inexact array; ``TypeError``, naming what it found, when it holds no inexact array.
    """
    if isinstance(tree, jax.Array) and _inexact(tree.dtype) and tree.size > 0:
        return tree, None  # the common case, checked in a microsecond
    leaves, treedef = jax.tree.flatten(tree)
    if not leaves:
        raise ValueError(f"{name} must contain at least one array, got {name}={tree!r}")
    kept = (jax.Array, np.ndarray) if keep_numpy else jax.Array
    out = []
    static_at = []  # (position, leaf) of the leaves carried unchanged
    paths = None
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, kept):
            dtype = leaf.dtype
        elif type(leaf) is float:
            if paths is None:
                paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
            if all(isinstance(k, _PLAIN_KEYS) for k in paths[i]):
                out.append(jnp.asarray(leaf))
            else:  # a module's or dataclass's setting (eqx.nn.Dropout's rate): carried
                static_at.append((i, leaf))
                out.append(None)
            continue
        elif isinstance(leaf, jax.Array | np.ndarray | np.generic):
            dtype = leaf.dtype
        else:
            static_at.append((i, leaf))
            out.append(None)
            continue
        if not _inexact(dtype):
            static_at.append((i, leaf))
            out.append(None)
            continue
        if leaf.size == 0:
            where = _where(treedef, i)
            raise ValueError(f"{name} must not hold empty arrays; leaf {where} has size 0")
        out.append(leaf if isinstance(leaf, kept) else jnp.asarray(leaf))
    if not static_at:
        return treedef.unflatten(out), None
    if len(static_at) == len(leaves):
        _no_trainable(name, tree, treedef, static_at)
    return treedef.unflatten(out), Rebuild(treedef, tuple(static_at))


_PLAIN_KEYS = (jax.tree_util.DictKey, jax.tree_util.SequenceKey)
"""Path entries of plain containers (dicts, lists, tuples): a Python float reached only through
them is a number to train; one that is a field of a class (a module's setting) is carried."""


def trained_part(rebuild: Rebuild | None, tree: PyTree) -> PyTree:
    """The trained part of ``tree``, given in full (the structure :func:`trainable` split) or as
    the trained part already (a direction ``v`` for a point ``x``); ``tree`` as it is when
    ``rebuild`` is ``None`` or it matches neither (the caller's shape check then names it)."""
    if rebuild is None:
        return tree
    try:
        return rebuild.partition(tree)
    except (ValueError, TypeError):
        return tree


def _no_trainable(name: str, tree: PyTree, treedef: Any, static_at: list) -> None:
    if treedef.num_nodes == 1:  # the whole argument is one leaf of the wrong kind
        leaf = static_at[0][1]
        raise TypeError(
            f"{name} must hold floating-point arrays; {name} {_is(leaf)}"
            f"{_dtype_hint(leaf)}, got {name}={_short(tree)}"
        )
    shown = [f"{_kind(leaf)} at {_where(treedef, i)}" for i, leaf in static_at[:6]]
    if len(static_at) > 6:
        shown.append(f"... ({len(static_at) - 6} more)")
    hint = any(hasattr(leaf, "dtype") for _, leaf in static_at)
    raise TypeError(
        f"{name} must contain at least one floating-point array to train, found: "
        + ", ".join(shown)
        + (" (convert an array to train it, e.g. with .astype(float))" if hint else "")
    )


def _where(treedef: Any, i: int) -> str:
    """The ``keystr`` path of leaf ``i`` of ``treedef``."""
    paths = jax.tree_util.tree_flatten_with_path(treedef.unflatten(range(treedef.num_leaves)))[0]
    return jax.tree_util.keystr(paths[i][0]) or "(the array itself)"


def _kind(leaf: Any) -> str:
    """A few words for what ``leaf`` is: "int32 array", "function", "str"."""
    if isinstance(leaf, jax.Array | np.ndarray | np.generic):
        return f"{leaf.dtype} array"
    if isinstance(leaf, type):
        return f"class {leaf.__name__}"
    if callable(leaf):
        return "function"
    return type(leaf).__name__


def _is(leaf: Any) -> str:
    """ "has dtype int32", "is a function", "is a str"."""
    if hasattr(leaf, "dtype"):
        return f"has dtype {leaf.dtype}"
    kind = _kind(leaf)
    return f"is {'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _dtype_hint(leaf: Any) -> str:
    return " (convert it, e.g. with .astype(float))" if hasattr(leaf, "dtype") else ""


class Rebuild:
    """Puts the static leaves that :func:`trainable` split off back into a trained part.

    ``rebuild(train)`` is the full tree; ``train``'s leaves may be tracers or carry extra leading
    (batch) axes. Hashable and comparable, so usable in a ``jax.jit`` static argument: equal when
    the tree structure is equal and each static leaf is equal (hashable leaves by type and value,
    arrays and unhashable objects by identity).
    """

    __slots__ = ("_hash", "_key", "_trained", "static_at", "treedef")

    def __init__(self, treedef: Any, static_at: tuple):
        self.treedef = treedef
        self.static_at = static_at
        static_positions = {i for i, _ in static_at}
        self._trained = tuple(i for i in range(treedef.num_leaves) if i not in static_positions)
        self._key = (treedef, tuple((i, _leaf_key(leaf)) for i, leaf in static_at))
        self._hash = hash(self._key)

    def __call__(self, train: PyTree) -> PyTree:
        trained = jax.tree.leaves(train)
        if len(trained) != len(self._trained):
            raise ValueError(f"rebuild expects {len(self._trained)} trained leaves, got "
                             f"{len(trained)}")
        leaves: list = [None] * self.treedef.num_leaves
        for i, leaf in self.static_at:
            leaves[i] = leaf
        for i, leaf in zip(self._trained, trained, strict=True):
            leaves[i] = leaf
        return self.treedef.unflatten(leaves)

    def partition(self, tree: PyTree) -> PyTree:
        """The trained part of a full ``tree`` of this structure (``None`` at static leaves)."""
        leaves = self.treedef.flatten_up_to(tree)
        for i, _ in self.static_at:
            leaves[i] = None
        return self.treedef.unflatten(leaves)

    def first_static(self) -> tuple[str, Any]:
        """The path and value of the first static leaf."""
        i, leaf = self.static_at[0]
        return _where(self.treedef, i), leaf

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rebuild) and (self is other or self._key == other._key)

    def __repr__(self) -> str:
        return f"Rebuild({self.treedef}, {len(self.static_at)} static leaves)"


def _leaf_key(leaf: Any) -> Any:
    if isinstance(leaf, jax.Array | np.ndarray):
        return _Identity(leaf)
    try:
        hash(leaf)
    except TypeError:
        return _Identity(leaf)
    return (type(leaf), leaf)


def bind(f: Callable, rebuild: Rebuild | None) -> Callable:
    """``f`` when ``rebuild`` is ``None``, else ``g`` with ``g(train, *a, **kw) ==
    f(rebuild(train), *a, **kw)``, equal and hashed by ``(f, rebuild)`` so that ``jax.jit``
    caches keyed on it hit across calls with the same model."""
    if rebuild is None:
        return f
    return Bound(f, rebuild)


class Bound:
    """``f`` called on the full tree that ``rebuild`` makes of its first argument."""

    __slots__ = ("__weakref__", "_key", "f", "rebuild")

    def __init__(self, f: Callable, rebuild: Rebuild):
        self.f = f
        self.rebuild = rebuild
        self._key = (static(f), rebuild)

    def __call__(self, train: PyTree, *args: Any, **kwargs: Any) -> Any:
        return self.f(self.rebuild(train), *args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature | None:  # f's, for the argument-count message
        try:
            return inspect.signature(self.f)
        except (TypeError, ValueError):
            return None

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bound) and self._key == other._key

    def __repr__(self) -> str:
        return repr(self.f)


@functools.lru_cache(maxsize=64)
def _inexact(dtype: np.dtype) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.inexact))


def scalar_function(name: str, f: Callable, *args: Any) -> jax.ShapeDtypeStruct:
    """``TypeError``/``ValueError`` unless ``f(*args)`` is a real scalar (checked abstractly).

    Returns the output's shape and dtype.
    """
    if not callable(f):
        raise TypeError(f"{name} must be callable, got {name}={f!r}")
    if getattr(type(f), "__module__", None) == "numpy":  # np.sum, np.sin (ufuncs, dispatchers)
        short = getattr(f, "__name__", "f")
        raise TypeError(
            f"{name} must be a JAX-traceable function, got the NumPy function "
            f"{name}=numpy.{short}; use jax.numpy instead: {name}=jnp.{short} "
            "(import jax.numpy as jnp), or a function written with jnp"
        )
    try:
        out = abstract(f, *args)
    except TypeError as e:
        check_arguments(name, f, args, e)
        raise
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(f"{name} must return a scalar array (e.g. jnp.sum(x**2)), got "
                        f"{_describe(out)} from {name}={_short(f)}")
    if out.shape != ():
        raise ValueError(
            f"{name} must return a scalar, got output of shape {out.shape} "
            f"(reduce it, e.g. with jnp.sum or jnp.mean)"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"{name} must return a floating-point scalar, got dtype {out.dtype}")
    return out


def check_arguments(name: str, f: Callable, args: tuple, error: TypeError) -> None:
    """A clear ``TypeError`` when ``f`` cannot be called with ``len(args)`` positional arguments
    (checked only after tracing failed, so a good call pays nothing)."""
    try:
        signature = inspect.signature(f)
    except (TypeError, ValueError):  # a builtin without a signature: JAX's error stands
        return
    try:
        signature.bind(*args)
    except TypeError:
        wanted = f"{len(args)} positional argument{'s' * (len(args) != 1)}"
        call = {1: " (x)", 2: " (params, batch)"}.get(len(args), "")
        raise TypeError(
            f"{name} must take {wanted}{call}, got {name}={_short(f)} with signature "
            f"{signature} ({error})"
        ) from None


def _describe(out: Any) -> str:
    if out is None:
        return "None (does it lack a return statement?)"
    if isinstance(out, tuple | list):
        return (f"a {type(out).__name__} of {len(out)} values (return the loss alone; "
                "minimize, fit and sweep take (loss, aux) with has_aux=True)")
    if isinstance(out, Mapping):
        return f"a {type(out).__name__} with keys {sorted(map(str, out))} (return the loss alone)"
    return f"a {type(out).__name__}"


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
        hash(f)
    except TypeError:
        return jax.eval_shape(_traceable(f), *args)
    return _abstract(f, signature)


_ONE_ARRAY = jax.tree.structure((0,))


@functools.lru_cache(maxsize=512)
def _abstract(f: Callable, signature: tuple) -> Any:
    treedef, avals = signature
    args = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in avals])
    return jax.eval_shape(_traceable(f), *args)


def _traceable(f: Callable) -> Callable:
    """``f``, or a plain function calling it when ``f`` takes no weak reference (a builtin).

    ``jax.eval_shape`` keeps a weak reference to what it traces: on such an ``f`` it raises a
    ``TypeError``, and on jax 0.10 a second try crashes the interpreter (a segfault).
    """
    try:
        weakref.ref(f)
    except TypeError:
        return lambda *args: f(*args)
    return f


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
