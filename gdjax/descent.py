"""Gradient descent on a function: the seed's ``gradient_descent`` and :func:`minimize`.

Both are thin shapes around the one scanned loop in :mod:`gdjax.engine`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gdjax import engine, inputs, optimizers
from gdjax.engine import History
from gdjax.finite_diff import numerical_gradient

PyTree = Any

GRAD_SOURCES = ("autodiff", "numerical")

SEED_STEP = 1e-4
"""The seed's finite-difference step ``h`` in ``numerical_gradient``."""


class Result(NamedTuple):
    """The outcome of :func:`minimize` or :func:`gdjax.fit`.

    Attributes:
      params: final parameters, same structure as the start (the last finite ones if diverged).
      loss: final loss (for ``fit``, the mean loss over the whole training set).
      status: ``"converged"``, ``"max_steps"`` or ``"diverged"``.
      steps: updates applied.
      history: the decimated :class:`gdjax.engine.History` (loss, gradient norm, ...).
      best_loss: smallest loss seen along the run.
      grad_norm: global gradient norm at ``params``.
      diverged_at: the step whose update produced a non-finite value, or ``None``.
    """

    params: PyTree
    loss: jax.Array
    status: str
    steps: int
    history: History
    best_loss: jax.Array
    grad_norm: jax.Array
    diverged_at: int | None

    @classmethod
    def from_packed(cls, packed: tuple, steps: int, record_every: int) -> Result:
        """A result from :func:`pack` 's output (a few arrays, cheap to return from ``jit``)."""
        params, numbers, history_params, metrics = packed
        # One device-to-host copy: each copy, or each index of a device array, costs
        # microseconds, as much as hundreds of steps of a small problem. (Positional
        # construction, slices and ``tolist``: this function once took as long as 200 such
        # steps.)
        numbers = np.asarray(numbers)
        scalars = numbers[-6:]
        status, n_steps, diverged_at = scalars[3:].view(_INTS[scalars.dtype]).tolist()
        n = (numbers.size - 6) >> 1
        history = History(
            engine.record_steps(steps, record_every), numbers[:n], numbers[n:-6], history_params,
            metrics,
        )
        return cls(
            params, scalars[0], engine.STATUS_NAMES[status], n_steps, history, scalars[2],
            scalars[1], None if diverged_at < 0 else diverged_at,
        )

    def __repr__(self) -> str:
        extra = "" if self.diverged_at is None else f", diverged_at={self.diverged_at}"
        return (
            f"Result(status={self.status!r}, loss={float(self.loss):.6g}, steps={self.steps}, "
            f"grad_norm={float(self.grad_norm):.3g}{extra}, params={self.params!r})"
        )


# The integer type of each float type's width: pack's integers travel bit for bit in floats.
_INTS = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


def pack(run: engine.Run, loss: jax.Array | None = None) -> tuple:
    """A run as four outputs, not fifteen: each output of a jitted call costs dispatch time,
    and each copy to the host costs more. The loss and gradient-norm curves and six scalars
    travel as one float vector, ``[loss curve, grad-norm curve, loss, grad_norm, best_loss,
    status, steps, diverged_at]``, the three integers bitcast to floats of the same width.

    ``loss`` replaces the run's final loss (``fit`` reports the loss over the whole data set).
    """
    loss = run.loss if loss is None else loss
    floats = (loss, run.grad_norm, run.best_loss)
    # at least 32 bits: a 16-bit float would hold a step count only up to 32767
    dtype = jnp.promote_types(jnp.result_type(*floats), jnp.float32)
    ints = jnp.stack([run.status, run.steps, run.diverged_at]).astype(_INTS[np.dtype(dtype)])
    scalars = jnp.concatenate([
        jnp.stack(floats).astype(dtype), jax.lax.bitcast_convert_type(ints, dtype)
    ])
    curves = [jnp.ravel(c).astype(dtype) for c in (run.history.loss, run.history.grad_norm)]
    # The scalars are written into the curves' padding in place. Concatenated with them, the
    # records went through an elementwise pass after the loop, and on XLA:CPU any such pass
    # over 1001 records cost ~50 us, as long as a 2-D run (benchmarks/RESULTS.md); a plain
    # concatenation and an in-place update of six values do not.
    numbers = jax.lax.dynamic_update_slice(
        jnp.concatenate([*curves, jnp.zeros(6, dtype)]), scalars, (2 * curves[0].size,)
    )
    return run.params, numbers, run.history.params, run.history.metrics


def gradient_source(f: Callable[[PyTree], jax.Array], grad: str) -> engine.ValueAndGrad:
    """The engine's gradient source for ``f``: ``"autodiff"`` or ``"numerical"``.

    ``"numerical"`` is the seed's estimator: central differences with ``h = 1e-4``.
    """
    if grad == "autodiff":
        return engine.autodiff(f)
    if grad == "numerical":
        return lambda x, t, aux: (f(x), numerical_gradient(f, x, method="central", step=SEED_STEP))
    raise ValueError(f"grad must be one of {GRAD_SOURCES}, got grad={grad!r}")


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
      init_x: the start.
      lr: the learning rate ``eta``.
      step_num: number of steps.
      grad: ``"autodiff"`` (``jax.grad``) or ``"numerical"`` (the seed's central differences,
        ``h = 1e-4``).

    Returns:
      The final ``x``, same structure as ``init_x``.

    Example (the seed's)::

      >>> import numpy as np, gdjax
      >>> x = gdjax.gradient_descent(gdjax.functions.function_2, np.array([-3.0, 4.0]),
      ...                            lr=0.1, step_num=100, grad="numerical")
      >>> np.array2string(np.asarray(x), precision=8)
      '[-6.11110793e-10  8.14814391e-10]'
    """
    res = minimize(
        f, init_x, optimizer="sgd", learning_rate=lr, steps=step_num, grad=grad,
        record_every=step_num,
    )
    return _as_numpy_like(res.params, init_x)


def minimize(
    f: Callable[[PyTree], jax.Array],
    x0: PyTree,
    optimizer: str | optax.GradientTransformation = "adam",
    *,
    learning_rate: float | Callable | None = None,
    steps: int = 1000,
    tol: float | None = None,
    ftol: float | None = None,
    record_every: int = 1,
    record_params: bool = False,
    grad: str = "autodiff",
    **hyperparameters: Any,
) -> Result:
    """Minimise ``f`` from ``x0`` with an optax optimiser, in one compiled loop.

    Args:
      f: scalar function of a pytree of float arrays.
      x0: the start (not modified).
      optimizer: a name from :data:`gdjax.OPTIMIZERS` or any optax transformation.
      learning_rate: a number or an optax schedule; the optimiser's default when ``None``.
      steps: maximum number of updates.
      tol: converged once the gradient's global norm is ``<= tol``.
      ftol: converged once an update changes the loss by ``<= ftol``.
      record_every: history every this many steps (plus the final state).
      record_params: record the parameters too (trajectory plots).
      grad: ``"autodiff"`` or ``"numerical"`` (the seed's central differences).
      **hyperparameters: other hyperparameters of a named optimiser (``momentum``, ``b1``...),
        or of an ``inject_hyperparams`` transformation.

    Returns:
      A :class:`Result`. A run whose loss or parameters become non-finite has status
      ``"diverged"`` and holds its last finite state; it does not raise.

    Raises:
      ValueError, TypeError: bad arguments, named with their value.

    Example:
      >>> import gdjax, jax.numpy as jnp
      >>> res = gdjax.minimize(gdjax.functions.rosenbrock, jnp.array([-1.2, 1.0]),
      ...                      "adam", learning_rate=0.05, steps=3000, tol=1e-4)
      >>> res.status, bool(jnp.allclose(res.params, 1.0, atol=1e-2))
      ('converged', True)
    """
    key = _call_key(f, x0, optimizer, learning_rate, steps, tol, ftol, record_every,
                    record_params, grad, hyperparameters)
    try:
        prepared = None if key is None else _PREPARED.get(key)
    except TypeError:  # an unhashable f or optimizer
        key = prepared = None
    if prepared is not None:
        # The same kinds of arguments passed every check before: skip them, and the
        # optimiser's preparation (~5 us a call, a sixth of a 1000-step 2-D run).
        tx, names, values, wide = prepared
        if wide:
            with jax.enable_x64(True):
                return _minimize(x0, values, tol, ftol, f, tx, names, grad, steps, record_every,
                                 record_params)
        return _minimize(
            x0, values, tol, ftol, f, tx, names, grad, steps, record_every, record_params
        )
    steps = inputs.positive_int("steps", steps)
    record_every = inputs.positive_int("record_every", record_every)
    tol = inputs.optional_tolerance("tol", tol)
    ftol = inputs.optional_tolerance("ftol", ftol)
    if grad not in GRAD_SOURCES:
        raise ValueError(f"grad must be one of {GRAD_SOURCES}, got grad={grad!r}")
    if learning_rate is not None:
        hyperparameters["learning_rate"] = learning_rate
    with inputs.precision(x0):
        x0 = inputs.float_params("x0", x0)
        inputs.scalar_function("f", f, x0)
        tx, numbers = optimizers.prepare(optimizer, hyperparameters)
        names, values = optimizers.as_vector(numbers)
        result = _minimize(
            x0, values, tol, ftol, f, tx, names, grad, steps, record_every, record_params
        )
    if key is not None and isinstance(values, jax.Array):
        if len(_PREPARED) >= _PREPARED_MAX:
            del _PREPARED[next(iter(_PREPARED))]  # the oldest entry
        _PREPARED[key] = (tx, names, values, values.dtype == np.float64)
    return result


_PREPARED: dict[tuple, tuple] = {}
"""``minimize``'s checked calls by their arguments' kinds: key -> ``(tx, names, values, wide)``."""
_PREPARED_MAX = 256


def _call_key(f, x0, optimizer, learning_rate, steps, tol, ftol, record_every, record_params,
              grad, hyperparameters) -> tuple | None:
    """A key under which a call's checks hold again, or ``None`` when there is none to trust.

    Only exact types take part (``True == 1`` and ``1 == 1.0`` would mix an argument that must
    fail with one that passed), a single jax array as the start (its shape and dtype are what
    the checks of ``x0`` and ``f`` read) and plain floats as hyperparameters (a NaN never
    equals itself, so it never hits). Whether float64 is on is part of the key: it decides the
    dtype of the hyperparameter vector.
    """
    if not (type(steps) is int and type(record_every) is int and type(record_params) is bool
            and isinstance(x0, jax.Array) and (learning_rate is None
                                               or type(learning_rate) is float)
            and (tol is None or type(tol) is float) and (ftol is None or type(ftol) is float)):
        return None
    named = ()
    if hyperparameters:
        if not all(type(v) is float for v in hyperparameters.values()):
            return None
        named = tuple(hyperparameters.items())
    return (f, optimizer, learning_rate, named, x0.shape, x0.dtype, steps, tol, ftol,
            record_every, record_params, grad, jax.config.jax_enable_x64)


def replayed(run: Callable[[bool], tuple], steps: int, record_every: int) -> Result:
    """The result of ``run(checked=False)``, a packed single run; if it diverged, that of
    ``run(checked=True)``, which keeps its last finite state (the checked loop is compiled only
    for problems that diverge; see ``engine.run``'s ``replay``)."""
    result = Result.from_packed(run(False), steps, record_every)
    if result.status == "diverged":
        result = Result.from_packed(run(True), steps, record_every)
    return result


def _minimize(x0, values, tol, ftol, f, tx, names, grad, steps, record_every, record_params):
    return replayed(
        lambda checked: _run(x0, values, tol, ftol, f, tx, names, grad, steps, record_every,
                             record_params, checked),
        steps, record_every,
    )


# Static arguments by position: jit's dispatch of keyword statics costs tens of microseconds a
# call, as much as a whole 1000-step run of a small problem.
@functools.partial(jax.jit, static_argnums=tuple(range(4, 12)))
def _run(x0, values, tol, ftol, f, tx, names, grad, steps, record_every, record_params,
         checked=False):
    run = engine.run(
        gradient_source(f, grad), tx, x0, steps=steps,
        opt_state=optimizers.init_state(tx, x0, dict(zip(names, values, strict=True))),
        record_every=record_every, gtol=tol, ftol=ftol, record_params=record_params,
        replay=False, checked=checked,
    )
    return pack(run)


def _as_numpy_like(x: PyTree, like: PyTree) -> PyTree:
    """NumPy leaves where the caller passed NumPy: the seed's function returns an ndarray."""
    return jax.tree.map(lambda a, b: np.asarray(a) if isinstance(b, np.ndarray) else a, x, like)
