"""Named optimisers: the ones the seed names and their close relatives, built from optax.

Every optimiser is an ``optax.GradientTransformation`` wrapped in ``optax.inject_hyperparams``, so
each numeric hyperparameter lives in the optimiser *state*. One compiled program then serves every
value: :func:`gdjax.sweep` gives the state a leading config axis instead of recompiling per value.
Anywhere a name is accepted, any optax transformation (or ``optax.chain``) is accepted too.

==========  ===================================  ============================================
name        update (``g`` gradient, ``eta`` lr)  differences from PyTorch's optimiser
==========  ===================================  ============================================
sgd         ``x -= eta g``                       none
momentum    ``v = mu v + g; x -= eta v``         none (``torch.optim.SGD(momentum=mu)``)
nesterov    ``v = mu v + g; x -= eta (g + mu v)`` none (``SGD(momentum=mu, nesterov=True)``)
adagrad     ``G += g^2; x -= eta g / sqrt(G+e)``  optax starts ``G`` at 0.1 (torch at 0) and
                                                 adds ``eps`` inside the square root
                                                 (torch: ``sqrt(G) + eps``, eps 1e-10)
rmsprop     ``G = d G + (1-d) g^2``              optax's ``decay`` default is 0.9 (torch's
            ``x -= eta g / sqrt(G + e)``         ``alpha`` 0.99) and ``eps`` sits inside the
                                                 square root (torch: ``sqrt(G) + eps``)
adam        Kingma & Ba (2015)                   none at the defaults (``eps`` outside the root)
adamw       Loshchilov & Hutter (2019)           optax's ``weight_decay`` default is 1e-4
                                                 (torch's 1e-2); decay is scaled by ``eta``
==========  ===================================  ============================================

References:
  Polyak (1964), heavy-ball momentum. Nesterov (1983). Duchi et al. (2011), Adagrad.
  Tieleman & Hinton (2012), RMSProp. Kingma & Ba, Adam, https://arxiv.org/abs/1412.6980.
  Loshchilov & Hutter, AdamW, https://arxiv.org/abs/1711.05101.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gdjax import inputs


class _Spec(NamedTuple):
    factory: Callable[..., optax.GradientTransformation]
    defaults: Mapping[str, float]  # every numeric hyperparameter, learning_rate first
    fixed: Mapping[str, Any]  # structural arguments that are not hyperparameters


_SPECS: dict[str, _Spec] = {
    "sgd": _Spec(optax.sgd, {"learning_rate": 0.01}, {}),
    "momentum": _Spec(optax.sgd, {"learning_rate": 0.01, "momentum": 0.9}, {}),
    "nesterov": _Spec(optax.sgd, {"learning_rate": 0.01, "momentum": 0.9}, {"nesterov": True}),
    "adagrad": _Spec(
        optax.adagrad,
        {"learning_rate": 0.1, "initial_accumulator_value": 0.1, "eps": 1e-7},
        {},
    ),
    "rmsprop": _Spec(optax.rmsprop, {"learning_rate": 0.01, "decay": 0.9, "eps": 1e-8}, {}),
    "adam": _Spec(optax.adam, {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8}, {}),
    "adamw": _Spec(
        optax.adamw,
        {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4},
        {},
    ),
}

OPTIMIZERS: tuple[str, ...] = tuple(_SPECS)
"""The names :func:`optimizer` knows."""

# Hyperparameters that must be > 0; the rest must be >= 0 (momentum and the betas also < 1).
_POSITIVE = {"learning_rate", "eps"}
_BELOW_ONE = {"momentum", "b1", "b2", "decay"}


def optimizer(name: str, **hyperparameters: Any) -> optax.GradientTransformation:
    """An optax optimiser by name, every numeric hyperparameter injectable.

    Args:
      name: one of :data:`OPTIMIZERS`: ``sgd``, ``momentum`` (heavy ball), ``nesterov``,
        ``adagrad``, ``rmsprop``, ``adam``, ``adamw``.
      **hyperparameters: overrides of the defaults (see :func:`hyperparameters`);
        ``learning_rate`` may also be an optax schedule ``step -> lr``.

    Returns:
      ``optax.inject_hyperparams(factory)(**values)``; its state has a ``hyperparams`` dict.

    Raises:
      ValueError: unknown name, unknown hyperparameter or out-of-range value.

    Example:
      >>> import gdjax, jax.numpy as jnp
      >>> tx = gdjax.optimizer("momentum", learning_rate=0.1, momentum=0.5)
      >>> state = tx.init(jnp.zeros(2))
      >>> float(state.hyperparams["momentum"])
      0.5
    """
    for k, v in hyperparameters.items():
        inputs.hyperparameter(k, v)
    return _build(name, _checked(name, hyperparameters), None)


def _build(name: str, hyperparameters: Mapping[str, Any],
           dtype: np.dtype | None) -> optax.GradientTransformation:
    spec = _spec(name)
    values = {**spec.defaults, **hyperparameters}
    return optax.inject_hyperparams(spec.factory, hyperparam_dtype=dtype)(**values, **spec.fixed)


_NAMED: dict[optax.GradientTransformation, str] = {}
"""The name of each transformation :func:`prepare` handed out lately (so :func:`init_state` can
rebuild its inner state); the most recently used 512. A transformation a user built with
:func:`optimizer` is not listed: its init-time values are its own, fixed when it was built."""


def hyperparameters(name: str) -> dict[str, float]:
    """The numeric hyperparameters of a named optimiser with their default values."""
    return dict(_spec(name).defaults)


def prepare(
    opt: str | optax.GradientTransformation, hyperparameters: Mapping[str, Any],
    params: Any = None,
) -> tuple[optax.GradientTransformation, dict[str, Any]]:
    """Check ``hyperparameters`` and split them into a transformation and state values.

    A named optimiser keeps its hyperparameters in the floating dtype of ``params`` (float32
    parameters are updated in float32 arithmetic even where ``jax_enable_x64`` is on, as a
    plain optax loop with Python-number hyperparameters does).

    For a name, the transformation is cached per name (and per schedule object), so repeated calls
    with new numeric values reuse one compiled program: the values travel in the optimiser state
    (:func:`init_state`). A user's transformation is used as it is; numeric hyperparameters are
    then set in its state, which must come from ``optax.inject_hyperparams``. Values may be
    traced (``jax.vmap`` or ``jax.grad`` over a learning rate); their ranges are checked when
    they are concrete.

    Returns:
      ``(tx, numbers)``: a hashable transformation (a static argument of ``jax.jit``) and the
      numeric hyperparameters to place in its state.
    """
    for k, v in hyperparameters.items():
        inputs.hyperparameter(k, v)
        if v is not None and not callable(v) and np.ndim(v) != 0:
            raise ValueError(
                f"{k} must be a scalar (one value for every coordinate), got an array of shape "
                f"{np.shape(v)}: {k}={v!r}; to try several values, use jax.vmap or gdjax.sweep"
            )
    if isinstance(opt, str):
        return _prepare_named(opt, hyperparameters, _float_dtype(params))
    if not isinstance(opt, optax.GradientTransformation):
        raise TypeError(
            "optimizer must be a name or an optax.GradientTransformation, got "
            f"optimizer={opt!r} of type {type(opt).__name__}"
        )
    return opt, {k: v for k, v in hyperparameters.items() if v is not None}


def init_state(tx: optax.GradientTransformation, params: Any, numbers: Mapping[str, Any]) -> Any:
    """``tx.init(params)`` with ``numbers`` set in its injected hyperparameters. Traceable.

    A named optimiser's inner state is initialised with ``numbers`` too, for hyperparameters
    read at initialisation (Adagrad's ``initial_accumulator_value``). A user's
    ``inject_hyperparams`` transformation keeps the inner state its own ``init`` made: pass
    such a hyperparameter when constructing it.
    """
    state = set_hyperparameters(tx.init(params), numbers)
    name = _NAMED.get(tx) if numbers else None
    if name is None:
        return state
    spec = _SPECS[name]
    inner = spec.factory(**state.hyperparams, **spec.fixed).init(params)
    return state._replace(inner_state=inner)


def injectable_names(opt: str | optax.GradientTransformation, params: Any) -> tuple[str, ...]:
    """Names of the hyperparameters that live in the optimiser's state (sweepable)."""
    if isinstance(opt, str):
        return tuple(_spec(opt).defaults)
    state = jax.eval_shape(opt.init, params)
    return tuple(getattr(state, "hyperparams", {}))


def set_hyperparameters(state: Any, values: Mapping[str, Any]) -> Any:
    """A copy of an ``inject_hyperparams`` state with some hyperparameters replaced.

    Traceable: ``values`` may be traced (a sweep vmaps over them).
    """
    if not values:
        return state
    known = getattr(state, "hyperparams", None)
    if not isinstance(known, Mapping):
        raise ValueError(
            f"cannot set hyperparameters {sorted(values)}: the optimizer's state has no "
            "injected hyperparameters; wrap it in optax.inject_hyperparams or pass a name from "
            f"{list(OPTIMIZERS)}"
        )
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {unknown}; this optimizer has {sorted(known)}"
        )
    new = dict(known)
    for k, v in values.items():
        new[k] = jnp.asarray(v, dtype=jnp.result_type(known[k]))
    return state._replace(hyperparams=new)


def _spec(name: str) -> _Spec:
    if not isinstance(name, str) or name not in _SPECS:
        raise ValueError(f"unknown optimizer {name!r}; known optimizers: {', '.join(OPTIMIZERS)}")
    return _SPECS[name]


def _checked(name: str, hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    spec = _spec(name)
    unknown = sorted(set(hyperparameters) - set(spec.defaults))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {unknown} for optimizer {name!r}; "
            f"it has {list(spec.defaults)}"
        )
    out = {}
    for k, v in hyperparameters.items():
        if v is None:
            continue
        if not callable(v) and _is_concrete_scalar(v):
            _check_range(k, float(v))
        out[k] = v
    return out


def _is_concrete_scalar(v: Any) -> bool:
    try:
        return np.ndim(v) == 0 and not isinstance(v, jax.core.Tracer)
    except TypeError:
        return False


def _check_range(k: str, v: float) -> None:
    if not math.isfinite(v):
        raise ValueError(f"{k} must be finite, got {k}={v}")
    if k in _POSITIVE and v <= 0:
        raise ValueError(f"{k} must be positive, got {k}={v}")
    if v < 0:
        raise ValueError(f"{k} must be non-negative, got {k}={v}")
    if k in _BELOW_ONE and v >= 1:
        raise ValueError(f"{k} must be in [0, 1), got {k}={v}")


def _float_dtype(params: Any) -> np.dtype | None:
    dtypes = {np.dtype(jnp.result_type(x)) for x in jax.tree.leaves(params)}
    floats = sorted(d for d in dtypes if jnp.issubdtype(d, jnp.floating))
    return floats[-1] if len(floats) == 1 else None


def _prepare_named(
    name: str, hyperparameters: Mapping[str, Any], dtype: np.dtype | None = None,
) -> tuple[optax.GradientTransformation, dict[str, Any]]:
    hyperparameters = _checked(name, hyperparameters)
    schedules = {k: v for k, v in hyperparameters.items() if callable(v)}
    # Only the hyperparameters a call names travel as values; the defaults stay constants of
    # the transformation's state, which XLA folds (Adam's bias correction with traced betas is
    # a power per step). Naming another set of hyperparameters compiles once more; new values
    # of the same set never do.
    numbers = {
        k: float(v) if _is_concrete_scalar(v) else v
        for k, v in hyperparameters.items()
        if k not in schedules and v is not None
    }
    tx = _cached(name, tuple(sorted(schedules.items(), key=lambda kv: kv[0])), dtype)
    _NAMED.pop(tx, None)  # most recently used last
    _NAMED[tx] = name
    if len(_NAMED) > 512:
        del _NAMED[next(iter(_NAMED))]
    return tx, numbers


@functools.lru_cache(maxsize=256)
def _cached(name: str, schedules: tuple[tuple[str, Callable], ...],
            dtype: np.dtype | None) -> optax.GradientTransformation:
    return _build(name, dict(schedules), dtype)
