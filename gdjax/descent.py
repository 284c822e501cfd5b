"""Gradient descent on a function: the seed's ``gradient_descent`` and :func:`minimize`.

Both are argument checks around the one loop in :mod:`gdjax.engine`. :func:`minimize` is an
ordinary JAX function: call it eagerly, or inside ``jax.jit``, ``jax.vmap`` and ``jax.grad``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gdjax import engine, inputs, optimizers
from gdjax.engine import Result
from gdjax.finite_diff import numerical_gradient

PyTree = Any

GRAD_SOURCES = ("autodiff", "numerical")

SEED_STEP = 1e-4
"""The seed's finite-difference step ``h`` in ``numerical_gradient``."""


def gradient_source(f: Callable[..., Any], grad: str, has_aux: bool = False) -> engine.ValueAndGrad:
    """The engine's gradient source for ``f(x, *args)``: ``"autodiff"`` or ``"numerical"``.

    The engine's ``aux`` is ``args``, the extra arguments (a tuple, ``None`` for none). With
    ``has_aux``, ``f`` returns ``(loss, aux)`` and its ``aux`` is dropped. ``"numerical"`` is the
    seed's estimator: central differences with ``h = 1e-4``.
    """
    loss = value_of(f, has_aux)
    if grad == "autodiff":
        value_and_grad = jax.value_and_grad(loss)
        return lambda x, t, args: value_and_grad(x, *(args or ()))
    if grad == "numerical":
        return lambda x, t, args: (
            loss(x, *(args or ())),
            numerical_gradient(lambda y: loss(y, *(args or ())), x, method="central",
                               step=SEED_STEP),
        )
    raise ValueError(f"grad must be one of {GRAD_SOURCES}, got grad={grad!r}")


def value_of(f: Callable[..., Any], has_aux: bool) -> Callable[..., Any]:
    """``f`` itself, or with ``has_aux`` the loss alone: ``f(...)[0]`` (one object per ``f``, so
    what is cached on it stays cached)."""
    if not has_aux:
        return f
    try:
        return _value_of(f)
    except TypeError:  # an unhashable f
        return lambda *a: f(*a)[0]


@functools.lru_cache(maxsize=256)
def _value_of(f: Callable[..., Any]) -> Callable[..., Any]:
    return lambda *a: f(*a)[0]


def check_objective(name: str, f: Callable, has_aux: Any, *args: Any) -> Any:
    """Check that ``f(*args)`` is a scalar loss, or with ``has_aux`` a pair ``(loss, aux)``;
    the loss's shape and dtype."""
    has_aux = inputs.flag("has_aux", has_aux)
    if has_aux and callable(f):
        try:
            out = inputs.abstract(f, *args)
        except TypeError as e:
            inputs.check_arguments(name, f, args, e)
            raise
        if not (isinstance(out, tuple | list) and len(out) == 2):
            kind = type(out).__name__
            raise TypeError(
                f"with has_aux=True, {name} must return a pair (loss, aux), got a {kind}"
                + (f" of {len(out)} values" if isinstance(out, tuple | list) else "")
            )
    return inputs.scalar_function(name, value_of(f, has_aux), *args)


def extra_args(args: Any) -> tuple:
    """``args`` as a tuple of arrays (a non-tuple is one argument, as in ``scipy.optimize``)."""
    if args is None:
        return ()
    if not isinstance(args, tuple):
        args = (args,)
    for i, leaf in enumerate(jax.tree.leaves(args)):
        if not (isinstance(leaf, jax.Array | np.ndarray | np.generic | int | float | complex)
                or isinstance(leaf, jax.core.Tracer)):
            raise TypeError(
                f"args must hold arrays or numbers (they are traced like x0), got leaf {i} of "
                f"type {type(leaf).__name__}: {leaf!r}; close over other values instead "
                "(f = functools.partial(f, setting=...))"
            )
    return jax.tree.map(jnp.asarray, args)


def gradient_descent(
    f: Callable[[PyTree], jax.Array],
    init_x: PyTree,
    lr: float = 0.01,
    step_num: int = 100,
    *,
    grad: str = "autodiff",
) -> PyTree:
    """The seed's gradient descent: ``step_num`` steps of ``x <- x - lr * grad f(x)``.

    .. math::

        x_{t+1} = x_t - \\eta \\nabla f(x_t)

    Unlike the seed, the caller's ``init_x`` is left unchanged; a float64 NumPy start runs in
    float64 (inside ``jax.enable_x64``, never a global flip).

    Args:
      f: scalar function of a pytree.
      init_x: the start: its inexact arrays are trained, other leaves carried unchanged (as in
        :func:`minimize`).
      lr: the learning rate ``eta``.
      step_num: number of steps.
      grad: ``"autodiff"`` (``jax.grad``) or ``"numerical"`` (the seed's central differences,
        ``h = 1e-4``).

    Returns:
      The final ``x``, same structure as ``init_x`` (NumPy leaves where ``init_x`` has them).

    Example (the seed's)::

      >>> import numpy as np, gdjax
      >>> x = gdjax.gradient_descent(gdjax.functions.function_2, np.array([-3.0, 4.0]),
      ...                            lr=0.1, step_num=100, grad="numerical")
      >>> np.array2string(np.asarray(x), precision=8)
      '[-6.11110793e-10  8.14814391e-10]'
    """
    step_num = inputs.positive_int("step_num", step_num)  # the seed's names in its messages
    lr = inputs.positive_number("lr", lr)
    res = minimize(
        f, init_x, optimizer="sgd", learning_rate=lr, steps=step_num, grad=grad,
        record_every=step_num,
    )
    return jax.tree.map(lambda a, b: np.asarray(a) if isinstance(b, np.ndarray) else a,
                        res.params, init_x)


def minimize(
    f: Callable[[PyTree], jax.Array],
    x0: PyTree,
    optimizer: str | optax.GradientTransformation = "adam",
    *,
    learning_rate: Any = None,
    steps: int = 1000,
    tol: Any = None,
    ftol: Any = None,
    record_every: int = 1,
    record_params: bool = False,
    grad: str = "autodiff",
    args: Any = (),
    has_aux: bool = False,
    divergence: float | None = engine.DIVERGENCE_FACTOR,
    **hyperparameters: Any,
) -> Result:
    """Minimise ``f`` from ``x0`` with an optax optimiser, in one compiled loop.

    A pure function of its array arguments: it runs eagerly, and composes with ``jax.jit``,
    ``jax.vmap`` (over ``x0``, ``learning_rate``, any numeric hyperparameter, ``tol``) and
    ``jax.grad``. ``jax.vmap(minimize)`` over learning rates is what :func:`gdjax.sweep` runs,
    config by config. Python-level arguments (``steps``, the optimiser's name, ``record_every``)
    are checked when traced; values (a negative learning rate, say) only when concrete.

    Differentiating through it (a *hypergradient*, e.g. ``jax.grad`` of the final loss with
    respect to ``learning_rate`` or ``x0``) keeps the state at the start of each segment of the
    loop (64 or 256 steps) and recomputes the segment on the way back: memory for about
    ``steps / 64 + 64`` copies of the parameters and optimiser state, for one more forward pass
    of compute. A shorter ``steps`` bounds it; a run that stops (a tolerance met) carries no
    gradient through the steps after its stop.

    Args:
      f: scalar function of a pytree.
      x0: the start (not modified), a pytree: its inexact arrays (floating or complex dtype;
        Python floats too) are trained, every other leaf (an ``equinox`` module's activation
        function, ``None``, Python ints and bools, integer arrays) is carried unchanged, so an
        ``equinox`` module is passed as it is. ``result.params`` (and recorded parameters) come
        back with the structure of ``x0``, the static leaves in place.
      optimizer: a name from :data:`gdjax.OPTIMIZERS` or any optax transformation.
      learning_rate: a number or an optax schedule; the optimiser's default when ``None``.
      steps: maximum number of updates.
      tol: converged once the gradient's global norm is ``<= tol``.
      ftol: converged once an update changes the loss by ``<= ftol``.
      record_every: history every this many steps (plus the final state).
      record_params: record the parameters too (trajectory plots).
      grad: ``"autodiff"`` or ``"numerical"`` (the seed's central differences).
      args: extra arguments: ``f(x, *args)`` (a non-tuple is one argument, as in
        ``scipy.optimize.minimize``). Arrays, traced like ``x0``: new values never recompile,
        and ``jax.vmap``/``jax.grad`` reach them.
      has_aux: ``f`` returns ``(loss, aux)`` (``jax.grad``'s convention); ``result.aux`` is the
        ``aux`` at the final parameters.
      divergence: a run has diverged once its loss is non-finite or passes
        ``f(x0) + divergence * max(|f(x0)|, 1)`` (on a quadratic of curvature ``L``, SGD at
        ``lr * L = 2.02`` passes the default ``1e4`` within 250 steps); ``None``: only a
        non-finite loss. Every evaluated step is checked (with ``tol``, ``ftol`` or
        ``record_every=1``); otherwise the end of each segment of 256 steps is, and a loss that
        passes the limit and falls back within one segment is missed (Adam at a huge rate can
        do that): ask for ``record_every=1`` to see every step.
      **hyperparameters: other hyperparameters of a named optimiser (``momentum``, ``b1``...),
        or of an ``inject_hyperparams`` transformation.

    Returns:
      A :class:`gdjax.Result`. A run that diverges (see ``divergence``) has status
      ``DIVERGED`` and holds its last state below the limit; it does not raise. When called
      eagerly ``status`` is a :class:`gdjax.Status` (so ``res.status == "converged"`` works);
      traced, an int32 array.

    Raises:
      ValueError, TypeError: bad arguments, named with their value.

    Example:
      >>> import gdjax, jax, jax.numpy as jnp
      >>> res = gdjax.minimize(gdjax.functions.rosenbrock, jnp.array([-1.2, 1.0]),
      ...                      "adam", learning_rate=0.05, steps=3000, tol=1e-4)
      >>> res.status, bool(jnp.allclose(res.params, 1.0, atol=1e-2))
      (<Status.CONVERGED: 1>, True)
      >>> f = lambda x: 0.5 * jnp.sum(x**2)
      >>> final = lambda lr: gdjax.minimize(f, jnp.ones(2), "sgd", learning_rate=lr,
      ...                                   steps=10).loss
      >>> [round(float(v), 6) for v in jax.vmap(final)(jnp.array([0.1, 0.5]))]
      [0.121577, 1e-06]
      >>> round(float(jax.grad(final)(0.1)), 4)  # d/d eta of (1 - eta)^20: -20 (0.9)^19
      -2.7017
    """
    steps = inputs.positive_int("steps", steps)
    record_every = inputs.positive_int("record_every", record_every)
    record_params = inputs.flag("record_params", record_params)
    tol = inputs.optional_tolerance("tol", tol)
    ftol = inputs.optional_tolerance("ftol", ftol)
    if grad not in GRAD_SOURCES:
        raise ValueError(f"grad must be one of {GRAD_SOURCES}, got grad={grad!r}")
    divergence = inputs.optional_tolerance("divergence", divergence)
    if learning_rate is not None:
        hyperparameters["learning_rate"] = learning_rate
    with inputs.precision(x0):
        x0, rebuild = inputs.trainable("x0", x0, keep_numpy=True)
        f = inputs.bind(f, rebuild)  # f of the trained part: the jit cache keys on (f, rebuild)
        args = extra_args(args)
        check_objective("f", f, has_aux, x0, *args)
        tx, numbers = optimizers.prepare(optimizer, hyperparameters, x0)
        result = _minimize(x0, numbers, tol, ftol, divergence, args, inputs.static(f), tx, grad,
                           steps, record_every, record_params, bool(has_aux))
    return concrete(rebuilt(result, rebuild))


def rebuilt(result: Result, rebuild: inputs.Rebuild | None) -> Result:
    """``result`` with its parameters (final and recorded) as full trees, the static leaves that
    :func:`gdjax.inputs.trainable` split off put back."""
    if rebuild is None:
        return result
    history = result.history
    if history is not None and history.params is not None:
        history = history._replace(params=rebuild(history.params))
    return result._replace(params=rebuild(result.params), history=history)


@functools.partial(engine.jit, static_argnums=(6, 7, 8, 9, 10, 11, 12))
def _minimize(x0, numbers, tol, ftol, divergence, args, f, tx, grad, steps, record_every,
              record_params, has_aux) -> Result:
    loss = value_of(f.value, has_aux)
    result = engine.run(
        gradient_source(f.value, grad, has_aux), tx, x0, steps=steps, aux=args,
        opt_state=optimizers.init_state(tx, x0, numbers), record_every=record_every, gtol=tol,
        ftol=ftol, divergence=divergence, value=lambda x, t, args: loss(x, *args),
        record_params=record_params,
    )
    if has_aux:
        result = result._replace(aux=f.value(result.params, *args)[1])
    return result


def concrete(result: Result) -> Result:
    """An eagerly computed single result with its status as a :class:`gdjax.Status` member;
    a traced or batched one as it is."""
    status = result.status
    if isinstance(status, jax.core.Tracer) or np.ndim(status) != 0:
        return result
    return result._replace(status=engine.Status(int(status)))
