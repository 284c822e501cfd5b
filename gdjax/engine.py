"""The one descent loop that every gdjax entry point runs on.

A *run* takes a gradient source, an optax transform and a start, and applies ``steps`` updates in a
``lax.scan``:

.. math::

    g_t = \\nabla f(x_t), \\qquad (u_t, s_{t+1}) = \\mathrm{tx.update}(g_t, s_t, x_t), \\qquad
    x_{t+1} = x_t + u_t .

Every step is a pure function of the carry, so ``jax.vmap(run)`` is a sweep: nothing branches on a
run's own values and nothing breaks out early (a batch may skip or replay a segment as a whole,
see :func:`run`). A run that has finished simply stops changing:

* *converged*: the gradient norm fell to ``gtol`` or the loss changed by at most ``ftol``;
* *diverged*: the loss became non-finite (a non-finite gradient or parameter shows in the loss at
  once or one step later; the start is checked in full). The run is frozen at its last finite
  parameters and remembers the step at which it diverged, so one bad member of a sweep never turns
  the others into NaN;
* *max_steps*: neither happened within ``steps``.

History is decimated: every ``record_every`` steps the loop stores the loss, the gradient norm and,
when asked, the parameters and user metrics, so memory does not grow with ``steps``. Records
after a run stopped repeat its final state.
"""

from __future__ import annotations

import functools
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
      loss: ``(R,)`` loss at the recorded parameters (the mini-batch loss for ``fit``). Records
        after a run stopped repeat its final state; a diverged run's loss and gradient norm read
        NaN from the step it diverged at.
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


class _Frozen(NamedTuple):
    """The per-run part of a :class:`_Carry`: what a stopping run's replay replaces."""

    params: PyTree
    loss: jax.Array
    grad: PyTree
    best_loss: jax.Array
    status: jax.Array
    stopped_at: jax.Array

    @classmethod
    def of(cls, c: _Carry) -> _Frozen:
        return cls(c.params, c.loss, c.grad, c.best_loss, c.status, c.stopped_at)


def autodiff(f: Callable[[PyTree], jax.Array]) -> ValueAndGrad:
    """The gradient source of a plain objective ``f(x) -> scalar`` by reverse-mode autodiff."""
    value_and_grad = jax.value_and_grad(f)
    return lambda params, t, aux: value_and_grad(params)


def all_finite(tree: PyTree) -> jax.Array:
    """True when every element of every leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


SMALL_LEAF = 16
"""Leaves up to this size are squared and summed element by element in :func:`global_norm`."""


def global_norm(tree: PyTree) -> jax.Array:
    """The global L2 norm of a pytree, as ``optax.tree.norm`` but fast under ``vmap``.

    Under ``vmap`` a per-run reduction over a few elements becomes a reduction over a tiny minor
    axis, which XLA:CPU runs ~7x slower than the same sum written element by element (measured:
    2000 steps of a 2-D gradient-norm check for 4096 runs, 40 ms against 10 ms; the steps
    themselves take 5 ms). Small leaves are therefore summed element by element.
    """
    terms = []
    for leaf in jax.tree.leaves(tree):
        flat = jnp.ravel(leaf)
        if flat.size <= SMALL_LEAF:
            terms += [flat[i] * flat[i] for i in range(flat.size)]
        else:
            terms.append(jnp.sum(flat * flat))
    total = sum(terms[1:], terms[0]) if terms else jnp.zeros(())
    return jnp.sqrt(total)


def _select(pred: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _step(
    c: _Carry,
    value_and_grad: ValueAndGrad,
    tx: optax.GradientTransformation,
    aux: PyTree,
    gtol: jax.Array | None,
    ftol: jax.Array | None,
    freeze_values: bool,
) -> _Carry:
    # Kept lean: on small problems every extra op in this body shows in the step time. Only the
    # loss is checked (a non-finite parameter or gradient makes it non-finite at once or one step
    # later). The parameters are frozen at the stop (a stopped run's optimiser state may move
    # on), and with ``freeze_values`` the loss and gradient too, so that the records taken after
    # the stop already hold the final state (one diverged run's replay, see ``_masked``). A
    # batch settles its records at the end instead:
    # under vmap XLA:CPU fuses a copy of the whole step into every select, and two more selects
    # made the checked step 2x slower.
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
        loss=jnp.where(commit, loss, c.loss) if freeze_values else loss,
        grad=_select(commit, grad, c.grad) if freeze_values else grad,
        best_loss=jnp.minimum(c.best_loss, jnp.where(commit, loss, jnp.inf)),
        status=status,
        stopped_at=jnp.where(running & (status != RUNNING), t, c.stopped_at),
        t=t,
    )


def _tolerance_met(loss, grad, previous_loss, gtol, ftol) -> jax.Array:
    met = jnp.array(False)
    if gtol is not None:
        met = met | (global_norm(grad) <= gtol)
    if ftol is not None and previous_loss is not None:
        met = met | (jnp.abs(loss - previous_loss) <= ftol)
    return met


UNROLL = 4
"""Steps per iteration of one run's compiled loop once its problem is too large to be small.

XLA:CPU compiles a while loop whose body touches under 1 KiB (``SmallWhileLoopHoistingPass``)
into one function; any other runs its body as a sequence of kernels, each with a fixed cost
that dominates a mid-sized problem's step. Unrolling pays that sequence's own overhead once
per ``UNROLL`` steps: measured on 1000 steps of Adam on Rosenbrock, 100-D 735 -> 490 us,
1000-D 2.28 -> 1.66 ms. A small loop must not be unrolled: the copies push it over the 1 KiB and
it runs 5-10x slower (2-D: 30 -> 300 us).
"""

SMALL_BYTES = 128
"""Parameters of at least this many bytes never make a small loop (the optimiser's state and the
gradient are as large, and each kernel of the step reads and writes them), so their loop is
unrolled. Measured on the cheapest step there is (SGD on the sphere): 16 float32 parameters
still make a small loop (34 us for 1000 steps; unrolled 174 us), 32 do not (481 us; unrolled
248 us). Adam on Rastrigin is past it at 16 already."""


def _unroll(params: PyTree) -> int:
    size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    return UNROLL if size >= SMALL_BYTES else 1


SEGMENT_STEPS = 64
"""Steps per segment: the loop checks for stopped runs once per segment (see :func:`run`)."""


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
    axis_name: str | None = None,
    replay: bool = True,
    checked: bool = False,
) -> Run:
    """Run ``steps`` updates of ``tx`` from ``params`` in one scanned loop.

    Traceable: call it under ``jax.jit`` and ``jax.vmap`` (a sweep is ``vmap`` of this function).
    Arguments are checked by the public entry points (:func:`gdjax.minimize`, :func:`gdjax.fit`,
    :func:`gdjax.sweep`), not here.

    One run (``axis_name=None``) takes a hand-written loop's step plus a stop flag: once a loss
    is non-finite or a tolerance is met the later updates are dropped and the gradient source is
    evaluated at the stop step again, so the run repeats its final state (no per-step status,
    freeze or copies; see :func:`_masked`). A run that diverged is run again with the per-step
    checks below, which keep its last finite state.

    A batch (``vmap`` with ``axis_name``) runs in segments of about :data:`SEGMENT_STEPS` steps,
    because per-run bookkeeping at every step costs as much as a small problem's arithmetic. A
    segment first runs as plain updates, as a hand-written loop would, keeping only a running
    minimum of each run's loss, which turns NaN for good once a loss is non-finite or a
    tolerance is met. Only when that shows a run stopping inside the segment is the segment run
    again from its start with the per-step checks, until the last stopping run has stopped, and
    the stopping runs take that replay; a segment in which every run had already stopped is
    skipped. The decisions are taken once for the whole batch (``lax.psum`` over
    ``axis_name``), so the branches stay branches. All ways
    give the same statuses, steps and frozen parameters.

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
      axis_name: the name of the enclosing ``vmap`` axis when running a batch (see above);
        vmapping without it also works, with one run's masked loop (a diverged run's replay
        then runs for the whole batch, as a ``cond`` under ``vmap`` does).
      replay: one run only: replay a diverged run with the per-step checks inside the program
        (a ``lax.cond``). With ``False`` a diverged run comes back with its status, steps and
        ``diverged_at`` right but not its last finite state, and the caller runs it again with
        ``checked=True`` (:func:`gdjax.minimize` and :func:`gdjax.fit` do, from the host: the
        checked loop is then compiled only for a problem that diverges, and the first call of
        one that does not compiles half as much).
      checked: one run only: run it with the per-step checks from the start (what the replay
        runs).

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

    def batch_any(flag):
        if axis_name is None:
            return flag
        return lax.psum(flag.astype(jnp.int32), axis_name) > 0

    def snapshot(c, settled=False):
        loss, norm = c.loss, global_norm(c.grad)
        if settled:
            # A frozen carry (one run's checked steps): only a divergence needs marking.
            diverged = c.status == DIVERGED
            loss, norm = (jnp.where(diverged, jnp.nan, v) for v in (loss, norm))
        return (
            loss,
            norm,
            c.params if record_params else None,
            None if record_fn is None else record_fn(c.params),
        )

    def exact_step(c, _):
        return _step(c, value_and_grad, tx, aux, gtol, ftol, axis_name is None), None

    def fast_step(c, _):
        updates, opt_state = tx.update(c.grad, c.opt_state, c.params)
        params = optax.apply_updates(c.params, updates)
        t = c.t + 1
        loss, grad = value_and_grad(params, t, aux)
        # The best loss doubles as the stop flag, so the fast loop carries nothing the plain
        # loop does not (a separate running sum cost 13% of a 4096-run 2-D sweep): a
        # non-finite loss, or a met tolerance, turns it NaN for good (``minimum`` propagates
        # NaN), and a replay recomputes it for the runs that stopped.
        keep = loss < jnp.inf  # False for NaN and +inf; -inf passes and shows as non-finite
        if gtol is not None or ftol is not None:
            keep = keep & ~_tolerance_met(loss, grad, c.loss, gtol, ftol)
        best_loss = jnp.minimum(c.best_loss, jnp.where(keep, loss, jnp.nan))
        return c._replace(
            params=params, opt_state=opt_state, loss=loss, grad=grad, best_loss=best_loss, t=t
        ), None

    def blocks(step, state, n_blocks, k, settled=False):
        """``n_blocks * k`` steps, a snapshot before every ``k``-th."""

        def block(state, _):
            record = snapshot(state, settled)
            if k == 1:
                state, _ = step(state, None)
            else:
                state, _ = lax.scan(step, state, length=k)
            return state, record

        return lax.scan(block, state, length=n_blocks)

    def segment(state, n_blocks, k):
        """``n_blocks`` records of ``k`` steps each, and whether some run stopped in them.

        ``state`` is ``(carry, stops)``: ``stops`` says whether some run of the batch stopped
        in the previous segment. A batch in which runs keep stopping (a sweep converging to a
        tolerance, say) would replay nearly every segment, so after a segment with a stop the
        next one runs checked straight away, until one passes without a stop.
        """
        c0, stops = state
        running = c0.status == RUNNING

        def skip(c0):
            record = jax.tree.map(lambda r: jnp.broadcast_to(r, (n_blocks, *r.shape)),
                                  snapshot(c0))
            return c0._replace(t=c0.t + n_blocks * k), record, jnp.array(False)

        def exact(c0):
            c, records = blocks(exact_step, c0, n_blocks, k)
            return c, records, batch_any(running & (c.status != RUNNING))

        def fast_then_replay(c0):
            c, records = blocks(fast_step, c0, n_blocks, k)
            stopping = running & ~jnp.isfinite(c.best_loss)
            # A run stopped before the segment keeps its parameters (its state may move on).
            c = c._replace(params=_select(running, c.params, c0.params),
                           best_loss=jnp.where(running, c.best_loss, c0.best_loss))

            def replay(c):
                # Checked steps from the segment's start until the last stopping run has
                # stopped (the rest of the segment would change none of what is merged).
                def unfinished(r):
                    return (r.t < c.t) & batch_any(stopping & (r.status == RUNNING))

                replayed = lax.while_loop(unfinished, lambda r: exact_step(r, None)[0], c0)
                # Only what differs per run is merged: the step count and the optimiser state
                # stay the fast path's (uniform across a batch, so e.g. Adam's bias correction
                # stays one scalar, not one per run; a stopped run's state is unused).
                merged = _select(stopping, _Frozen.of(replayed), _Frozen.of(c))
                return c._replace(**merged._asdict())

            # The records stay the fast path's: up to a run's stop they are the replay's too,
            # and after it the end of the run overwrites them with its final state.
            any_stopping = batch_any(stopping)
            return lax.cond(any_stopping, replay, lambda c: c, c), records, any_stopping

        if axis_name is None:
            # One run replaying a divergence: checked steps, whose frozen carry gives the
            # records after the stop as they should read.
            c, records = blocks(exact_step, c0, n_blocks, k, settled=True)
            return (c, stops), records
        branch = jnp.where(batch_any(running), jnp.where(stops, 1, 2), 0)
        c, records, stops = lax.switch(branch, (skip, exact, fast_then_replay), c0)
        return (c, stops), records

    def segments(carry):
        """The whole run in segments; returns the last carry and the records, in parts."""
        n_records, tail = divmod(steps, record_every)
        # One run is one segment; a batch checks in segments of about SEGMENT_STEPS steps.
        per_segment = max(1, n_records if axis_name is None else SEGMENT_STEPS // record_every)
        n_segments, rest = divmod(n_records, per_segment)
        state = (carry, jnp.array(False))
        parts = []
        if n_segments == 1:
            state, records = segment(state, per_segment, record_every)
            parts.append(records)
        elif n_segments:
            state, records = lax.scan(
                lambda s, _: segment(s, per_segment, record_every), state, length=n_segments
            )
            parts.append(jax.tree.map(lambda r: r.reshape(-1, *r.shape[2:]), records))
        if rest:
            state, records = segment(state, rest, record_every)
            parts.append(records)
        if tail:
            state, records = segment(state, 1, tail)
            parts.append(records)
        return state[0], parts

    if axis_name is None:

        def checked_loop(carry):
            carry, parts = segments(carry)
            parts.append(jax.tree.map(lambda r: r[None], snapshot(carry, settled=True)))
            return carry, jax.tree.map(lambda *rs: jnp.concatenate(rs), *parts)

        if checked:
            carry, records = checked_loop(carry)
        else:
            carry, records = _masked(carry, value_and_grad, tx, aux, steps, record_every, gtol,
                                     ftol, snapshot, checked_loop if replay else None)
    else:
        carry, parts = segments(carry)

    status = jnp.where(carry.status == RUNNING, MAX_STEPS, carry.status).astype(jnp.int32)
    # Updates applied: all of them, or up to the stop (a diverged run's last update is rejected).
    diverged = status == DIVERGED
    n_steps = jnp.where(status == MAX_STEPS, steps, carry.stopped_at - diverged).astype(jnp.int32)
    n_steps = jnp.maximum(n_steps, 0)
    at = jnp.asarray(record_steps(steps, record_every))
    if axis_name is None:
        # One run's carry is frozen at its stop and its records are settled already (settling
        # them here instead made XLA:CPU's last fusion cost as much as a 1000-step 2-D run).
        loss, grad = carry.loss, carry.grad
        history = History(at, *records)
    else:
        # A batch's fast steps leave the values of the updates after a stop in the carry:
        # evaluate the frozen parameters once more, at the step they were frozen at (the
        # mini-batch of a ``fit`` depends on it; one run's frozen carry holds that step's
        # values), and settle the records after the stop.
        t_final = jnp.where(status == MAX_STEPS, carry.t, carry.stopped_at - diverged)
        loss, grad = value_and_grad(carry.params, jnp.maximum(t_final, 0), aux)
        final = snapshot(carry._replace(loss=loss, grad=grad))
        parts.append(jax.tree.map(lambda r: r[None], final))
        records = jax.tree.map(lambda *rs: jnp.concatenate(rs), *parts)
        # After the stop the records repeat the final state; a diverged run's loss and
        # gradient norm read NaN from the step it diverged at. NaN is chosen once per run: a
        # record-wise ``where(after & diverged, nan, ...)`` cost ~50 us more in XLA:CPU.
        after = (status != MAX_STEPS) & (at > carry.stopped_at - diverged)

        def hold(r, f):
            return jnp.where(after.reshape(-1, *([1] * f.ndim)), f, r)

        nan_if_diverged = lambda f: jnp.where(diverged, jnp.nan, f)  # noqa: E731
        history = History(
            at,
            hold(records[0], nan_if_diverged(final[0])),
            hold(records[1], nan_if_diverged(final[1])),
            *(None if r is None else jax.tree.map(hold, r, f)
              for r, f in zip(records[2:], final[2:], strict=True)),
        )
    return Run(
        params=carry.params,
        loss=loss,
        grad_norm=global_norm(grad),
        best_loss=carry.best_loss,
        status=status,
        steps=n_steps,
        diverged_at=jnp.where(diverged, carry.stopped_at, -1).astype(jnp.int32),
        history=history,
        opt_state=carry.opt_state,
    )


class _Loop(NamedTuple):
    """The carry of :func:`_masked`: a hand-written loop's, plus a best loss and a stop step."""

    params: PyTree
    opt_state: PyTree
    loss: jax.Array
    grad: PyTree
    best_loss: jax.Array
    stopped_at: jax.Array  # -1 while running: every loss finite so far and no tolerance met
    t: jax.Array


def _masked(c0, value_and_grad, tx, aux, steps, record_every, gtol, ftol, snapshot, checked):
    """One run as a hand-written loop runs it, plus a stop flag; ``checked`` if it diverged.

    Each step is the plain update and evaluation; a flag ``go`` then turns false for good once
    the loss is non-finite or a tolerance is met. Later updates are dropped (a select after the
    add, in the same fused loop, not another pass over the parameters) and the source is
    evaluated at the stop step again, so a stopped run repeats its stop's parameters, loss and
    gradient (``fit``'s mini-batch included) and its later records need no settling. The
    checked loop's per-step status, frozen copies and selects cost ~25% more kernels a step
    (profiled at 1000-D: 25 against a hand-written loop's 17) and made XLA copy the carried
    gradient every step.

    A diverged run is the exception: its last finite state is gone (its parameters were
    updated before its loss was seen), so it is run again from ``c0`` by ``checked``, the
    per-step checked loop, which freezes it there (or by the caller, when ``checked`` is
    ``None``). Diverging single runs cost twice. (Running
    this loop again instead, stopped one step before the divergence, in the ``cond`` or in a
    ``while_loop`` of passes, compiled to a program that XLA:CPU dispatched kernel by kernel:
    2-3x slower on a 2-D problem.)
    """
    k = record_every
    unroll = _unroll(c0.params)

    def step(s, _):
        go = s.stopped_at < 0
        updates, opt_state = tx.update(s.grad, s.opt_state, s.params)
        # A stopped run keeps its parameters (the select sits in the same fused loop as the
        # add: ``go`` is known before the step) and its source is evaluated at its stop step
        # again, so it repeats its stop's values. Selecting after the add, not masking the
        # update, keeps the add as a batch computes it (rounding included: a masked update
        # broke XLA's multiply-add contraction and moved a borderline ``ftol`` stop by a step).
        params = _select(go, optax.apply_updates(s.params, updates), s.params)
        t = s.t + 1
        loss, grad = value_and_grad(params, jnp.where(go, t, s.stopped_at), aux)
        ok = jnp.isfinite(loss)
        if gtol is not None or ftol is not None:
            ok = ok & ~_tolerance_met(loss, grad, s.loss, gtol, ftol)
        # Every op here is a kernel a step: one flag, the stop step, says it all.
        stopped_at = jnp.where(go & ~ok, t, s.stopped_at)
        return _Loop(params, opt_state, loss, grad, jnp.minimum(s.best_loss, loss),
                     stopped_at, t), None

    def snap(s):
        return snapshot(c0._replace(params=s.params, loss=s.loss, grad=s.grad))

    def block(s, _):
        # Recorded after the steps: recording the gradient the next update reads made XLA
        # copy that gradient every step.
        s, _ = step(s, None) if k == 1 else lax.scan(step, s, length=k, unroll=unroll)
        return s, snap(s)

    s = _Loop(c0.params, c0.opt_state, c0.loss, c0.grad, c0.best_loss, c0.stopped_at, c0.t)
    parts = [jax.tree.map(lambda r: r[None], snap(s))]
    n_blocks, tail = divmod(steps, k)
    if n_blocks:
        s, records = lax.scan(block, s, length=n_blocks, unroll=unroll if k == 1 else 1)
        parts.append(records)
    if tail:
        s, _ = lax.scan(step, s, length=tail, unroll=unroll)
        parts.append(jax.tree.map(lambda r: r[None], snap(s)))
    records = jax.tree.map(lambda *rs: jnp.concatenate(rs), *parts)
    stopped = jnp.where(jnp.isfinite(s.loss), CONVERGED, DIVERGED)
    status = jnp.where(s.stopped_at < 0, RUNNING,
                       jnp.where(s.stopped_at == 0, c0.status, stopped))
    carry = _Carry(
        params=s.params,
        opt_state=s.opt_state,
        loss=s.loss,
        grad=s.grad,
        best_loss=s.best_loss,
        status=status.astype(jnp.int32),
        stopped_at=s.stopped_at,
        t=s.t,
    )
    if checked is None:
        return carry, records
    return lax.cond(status == DIVERGED, lambda: checked(c0), lambda: (carry, records))


@functools.lru_cache(maxsize=256)
def record_steps(steps: int, record_every: int) -> np.ndarray:
    """The steps at which :func:`run` records: ``0, k, 2k, ...`` below ``steps``, then ``steps``.

    Cached (every result record carries it) and therefore read-only.
    """
    at = np.append(np.arange(0, steps, record_every), steps).astype(np.int32)
    at.flags.writeable = False
    return at


def status_names(codes: Any) -> np.ndarray:
    """The readable status (``"converged"``, ``"max_steps"``, ``"diverged"``) of int codes."""
    return _STATUS_ARRAY[np.asarray(codes)]


_STATUS_ARRAY = np.asarray(STATUS_NAMES)
