"""The one descent loop that every gdjax entry point runs on.

A *run* takes a gradient source, an optax transform and a start, and applies ``steps`` updates in a
``lax.scan``:

.. math::

    g_t = \\nabla f(x_t), \\qquad (u_t, s_{t+1}) = \\mathrm{tx.update}(g_t, s_t, x_t), \\qquad
    x_{t+1} = x_t + u_t .

Every step is a pure function of the carry, so ``jax.vmap(run)`` is a sweep: nothing branches on a
traced value and nothing breaks out early. A run that has finished simply stops changing:

* *converged*: the gradient norm fell to ``gtol`` or the loss changed by at most ``ftol``;
* *diverged*: the loss became non-finite (a non-finite gradient or parameter shows in the loss at
  once or one step later; the start is checked in full). The run is frozen at its last finite
  parameters and remembers the step at which it diverged, so one bad member of a sweep never turns
  the others into NaN;
* *max_steps*: neither happened within ``steps``.

History is decimated: every ``record_every`` steps the loop stores the loss, the gradient norm and,
when asked, the parameters and user metrics, so memory does not grow with ``steps``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

PyTree = Any

# Status codes as stored in the int32 ``status`` arrays; ``STATUS_NAMES[code]`` reads them.
RUNNING, CONVERGED, MAX_STEPS, DIVERGED = 0, 1, 2, 3
STATUS_NAMES = ("running", "converged", "max_steps", "diverged")

ValueAndGrad = Callable[[PyTree, jax.Array, PyTree], tuple[jax.Array, PyTree]]
"""A gradient source: ``value_and_grad(params, t, aux) -> (loss, grads)``.

``t`` is the int32 index of the step whose parameters are evaluated (``fit`` uses it to pick the
mini-batch), ``aux`` any pytree of arrays the source needs (data, batch indices); either may
be ignored.
"""


class History(NamedTuple):
    """What the loop recorded, one entry every ``record_every`` steps plus the final state.

    Attributes:
      step: int32 ``(R,)``, the step index of each record (``0, k, 2k, ..., steps``).
      loss: ``(R,)`` loss at the recorded parameters (the mini-batch loss for ``fit``); after a
        run diverged, the non-finite value of the update it rejected.
      grad_norm: ``(R,)`` global L2 norm of the gradient there.
      params: the recorded parameters with a leading ``(R,)`` axis, or ``None``.
      metrics: the recorded ``record_fn(params)`` pytree with a leading ``(R,)`` axis, or ``None``.
    """

    step: jax.Array
    loss: jax.Array
    grad_norm: jax.Array
    params: PyTree = None
    metrics: PyTree = None


class Run(NamedTuple):
    """The outcome of one run (every field gains a leading config axis under ``vmap``).

    Attributes:
      params: final parameters: the last finite ones for a diverged run.
      loss: loss at ``params``.
      grad_norm: gradient norm at ``params``.
      best_loss: smallest loss seen along the run.
      status: int32 code, one of ``CONVERGED``, ``MAX_STEPS``, ``DIVERGED``.
      steps: int32, updates applied.
      diverged_at: int32, the step whose update produced a non-finite value, or -1.
      history: the decimated :class:`History`.
      opt_state: the optimiser state at the end of the loop (it may have moved on after the
        run stopped; the parameters do not).
    """

    params: PyTree
    loss: jax.Array
    grad_norm: jax.Array
    best_loss: jax.Array
    status: jax.Array
    steps: jax.Array
    diverged_at: jax.Array
    history: History
    opt_state: PyTree


class _Carry(NamedTuple):
    params: PyTree
    opt_state: PyTree
    loss: jax.Array
    grad: PyTree
    best_loss: jax.Array
    status: jax.Array
    stopped_at: jax.Array  # the step at which the status left RUNNING; -1 while running
    t: jax.Array


def autodiff(f: Callable[[PyTree], jax.Array]) -> ValueAndGrad:
    """The gradient source of a plain objective ``f(x) -> scalar`` by reverse-mode autodiff."""
    value_and_grad = jax.value_and_grad(f)
    return lambda params, t, aux: value_and_grad(params)


def all_finite(tree: PyTree) -> jax.Array:
    """True when every element of every leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _select(pred: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _step(
    c: _Carry,
    value_and_grad: ValueAndGrad,
    tx: optax.GradientTransformation,
    aux: PyTree,
    gtol: jax.Array | None,
    ftol: jax.Array | None,
) -> _Carry:
    # Kept lean: on small problems every extra op in this body shows in the step time. Only the
    # loss is checked (a non-finite parameter or gradient makes it non-finite at once or one step
    # later) and only the parameters are frozen: :func:`run` evaluates the loss and gradient at
    # the frozen parameters once at the end, and a stopped run's optimiser state may move on.
    running = c.status == RUNNING
    updates, opt_state = tx.update(c.grad, c.opt_state, c.params)
    params = optax.apply_updates(c.params, updates)
    t = c.t + 1
    loss, grad = value_and_grad(params, t, aux)

    finite = jnp.isfinite(loss)
    commit = running & finite
    status = jnp.where(running & ~finite, DIVERGED, c.status)
    if gtol is not None or ftol is not None:
        met = _tolerance_met(loss, grad, c.loss, gtol, ftol)
        status = jnp.where(commit & met, CONVERGED, status)
    return _Carry(
        params=_select(commit, params, c.params),
        opt_state=opt_state,
        loss=loss,
        grad=grad,
        best_loss=jnp.minimum(c.best_loss, jnp.where(commit, loss, jnp.inf)),
        status=status,
        stopped_at=jnp.where(running & (status != RUNNING), t, c.stopped_at),
        t=t,
    )


def _tolerance_met(loss, grad, previous_loss, gtol, ftol) -> jax.Array:
    met = jnp.array(False)
    if gtol is not None:
        met = met | (optax.tree.norm(grad) <= gtol)
    if ftol is not None and previous_loss is not None:
        met = met | (jnp.abs(loss - previous_loss) <= ftol)
    return met


def run(
    value_and_grad: ValueAndGrad,
    tx: optax.GradientTransformation,
    params: PyTree,
    *,
    steps: int,
    aux: PyTree = None,
    opt_state: PyTree = None,
    record_every: int = 1,
    gtol: float | jax.Array | None = None,
    ftol: float | jax.Array | None = None,
    record_params: bool = False,
    record_fn: Callable[[PyTree], PyTree] | None = None,
) -> Run:
    """Run ``steps`` updates of ``tx`` from ``params`` in one scanned loop.

    Traceable: call it under ``jax.jit`` and ``jax.vmap`` (a sweep is ``vmap`` of this function).
    Arguments are checked by the public entry points (:func:`gdjax.minimize`, :func:`gdjax.fit`,
    :func:`gdjax.sweep`), not here.

    Args:
      value_and_grad: the gradient source, ``(params, t, aux) -> (loss, grads)``; see
        :func:`autodiff`.
      tx: any optax transformation.
      params: the start, any pytree of float arrays.
      steps: number of updates (static).
      aux: pytree handed to ``value_and_grad`` at every step.
      opt_state: the optimiser state to start from; ``tx.init(params)`` when ``None`` (a sweep
        passes states whose injected hyperparameters differ per config).
      record_every: record every this many steps (static), at steps ``0, k, 2k, ...``; the final
        state is always recorded too.
      gtol: converged once the gradient's global norm is ``<= gtol``; ``None`` disables it.
      ftol: converged once one update changes the loss by ``<= ftol``; ``None`` disables it.
      record_params: also record the parameters (e.g. for trajectory plots).
      record_fn: ``params -> pytree of arrays`` recorded beside the loss (e.g. a test loss).

    Returns:
      A :class:`Run`.
    """
    opt_state = tx.init(params) if opt_state is None else opt_state
    loss, grad = value_and_grad(params, jnp.int32(0), aux)
    dtype = jnp.result_type(loss)
    gtol = None if gtol is None else jnp.asarray(gtol, dtype)
    ftol = None if ftol is None else jnp.asarray(ftol, dtype)
    finite = jnp.isfinite(loss) & all_finite(params) & all_finite(grad)
    status = jnp.where(finite, RUNNING, DIVERGED)
    if gtol is not None:
        met_at_start = _tolerance_met(loss, grad, None, gtol, None)
        status = jnp.where(finite & met_at_start, CONVERGED, status)
    carry = _Carry(
        params=params,
        opt_state=opt_state,
        loss=loss,
        grad=grad,
        best_loss=jnp.where(finite, loss, jnp.inf).astype(dtype),
        status=status.astype(jnp.int32),
        stopped_at=jnp.where(status == RUNNING, -1, 0).astype(jnp.int32),
        t=jnp.int32(0),
    )

    def one_step(c, _):
        return _step(c, value_and_grad, tx, aux, gtol, ftol), None

    def snapshot(c):
        return (
            c.loss,
            optax.tree.norm(c.grad),
            c.params if record_params else None,
            None if record_fn is None else record_fn(c.params),
        )

    def record_then_advance(c, _):
        record = snapshot(c)
        c, _ = lax.scan(one_step, c, length=record_every)
        return c, record

    n_records, tail = divmod(steps, record_every)
    carry, records = lax.scan(record_then_advance, carry, length=n_records)
    extra = []
    if tail:
        extra.append(snapshot(carry))
        carry, _ = lax.scan(one_step, carry, length=tail)
    extra.append(snapshot(carry))
    records = jax.tree.map(lambda rs, *r: jnp.concatenate([rs, jnp.stack(r)]), records, *extra)
    history = History(jnp.asarray(record_steps(steps, record_every)), *records)

    status = jnp.where(carry.status == RUNNING, MAX_STEPS, carry.status).astype(jnp.int32)
    # Updates applied: all of them, or up to the stop (a diverged run's last update is rejected).
    diverged = status == DIVERGED
    n_steps = jnp.where(status == MAX_STEPS, steps, carry.stopped_at - diverged).astype(jnp.int32)
    n_steps = jnp.maximum(n_steps, 0)
    # A diverged run's carry holds the non-finite values its last update produced: evaluate the
    # frozen (last finite) parameters once more.
    loss, grad = value_and_grad(carry.params, carry.t, aux)
    return Run(
        params=carry.params,
        loss=loss,
        grad_norm=optax.tree.norm(grad),
        best_loss=carry.best_loss,
        status=status,
        steps=n_steps,
        diverged_at=jnp.where(diverged, carry.stopped_at, -1).astype(jnp.int32),
        history=history,
        opt_state=carry.opt_state,
    )


def record_steps(steps: int, record_every: int) -> np.ndarray:
    """The steps at which :func:`run` records: ``0, k, 2k, ...`` below ``steps``, then ``steps``."""
    return np.append(np.arange(0, steps, record_every), steps).astype(np.int32)


def status_names(codes: Any) -> np.ndarray:
    """The readable status (``"converged"``, ``"max_steps"``, ``"diverged"``) of int codes."""
    return np.asarray(STATUS_NAMES)[np.asarray(codes)]
