"""The one descent loop under every gdjax entry point: a pure function of arrays.

A *run* takes a gradient source, an optax transformation and a start, and applies up to ``steps``
updates:

.. math::

    (u_t, s_t) = \\mathrm{tx.update}(g_{t-1}, s_{t-1}, x_{t-1}), \\qquad x_t = x_{t-1} + u_t,
    \\qquad (f_t, g_t) = (f(x_t), \\nabla f(x_t)).

:func:`run` is an ordinary JAX function: call it eagerly or under ``jax.jit``; ``jax.vmap`` of it
is a sweep; ``jax.grad`` through it gives hypergradients. It never raises on numerical trouble
and never branches in Python on a run's values. A run ends with one :class:`Status`:

* ``CONVERGED``: the gradient norm fell to ``gtol``, or one update changed the loss by at most
  ``ftol``; the run keeps the parameters at which that happened;
* ``DIVERGED``: the loss became non-finite (a non-finite parameter or gradient shows in the loss at
  once or one step later; the start is checked in full) or passed the run's *ceiling*,
  ``f0 + divergence * max(|f0|, 1)`` for a start loss ``f0`` (:data:`DIVERGENCE_FACTOR`). The
  run keeps its last parameters before that and the step at which it diverged, so one bad
  member of a sweep never turns the others into NaN;
* ``MAX_STEPS``: neither happened within ``steps``.

How the loop is organised (the reasons are XLA:CPU's costs, measured in benchmarks/RESULTS.md):

* **One step function**, :func:`step`. Stopping is one int per run, ``flag``: 0 while running,
  ``t + 1`` once converged at step ``t``, ``-(t + 1)`` once diverged at step ``t``. A stopped
  run's update is multiplied by 0, not selected away (under ``vmap`` a select on a per-run
  predicate costs XLA:CPU 3-4x the whole step, a multiply almost nothing).
* **Two kinds of steps.** With ``gtol``/``ftol`` (or a record every step) every step
  evaluates the loss and tests the stop rule. Without them only divergence can stop a run, so
  the steps only update, as a hand-written loop does (the gradient fused with the update, no
  loss), and the segment's end checks that the loss is still finite.
* **Segments** of :data:`SEGMENT_STEPS` evaluated or :data:`FAST_SEGMENT_STEPS` plain steps. A
  segment in which no run is running is skipped (a ``lax.cond`` on :func:`batch_any`, which stays
  a branch under ``vmap``), so a batch whose runs have all stopped stops costing.
* **Replays**: a run that diverged inside a segment (or, rarely, whose parameters a non-finite
  update carried off after it stopped) is marked with the segment's starting state; after the
  last segment the marked runs run that segment again, evaluating every step and keeping the
  last parameters they held while running, so they end at their last finite state with the
  step of their divergence. Every kind of step computes the same ``x + m * u``, so a replay
  retraces the steps it replays bit for bit. (:func:`gdjax.sweep` replays only the marked runs.)
* **History** is decimated: every ``record_every`` steps the loss and gradient norm (and, when
  asked, the parameters and ``record_fn``'s metrics). Records from a run's stop on are set to its
  final state at the end (a diverged run's loss and gradient norm read NaN from the step it
  diverged at).

gdjax's own top-level programs (``minimize``, ``fit``, a sweep's) are compiled through :func:`jit`,
which on XLA:CPU keeps YNNPACK library fusions to dot products (:data:`COMPILER_OPTIONS`: its
reductions made a small objective's sweep several times slower); inside a user's transformation
the user's program and its options are what compile.

Differentiating through a run (``jax.grad`` of its final loss with respect to ``x0`` or a
learning rate) stores the state at each segment's start (each segment is ``jax.checkpoint``-ed)
and recomputes the segment on the way back: memory grows as ``steps / S + S`` copies of the
state for segments of ``S`` steps, not ``steps`` copies, for one more forward pass of compute.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.extend import core as jax_core
from jax.interpreters import batching, mlir

PyTree = Any


class Status(enum.IntEnum):
    """How a run ended: the int codes in every ``status`` array, from the engine to the CLI.

    A member compares equal to its code and to its lower-case name, so ``result.status ==
    "converged"`` works on a concrete result; arrays of codes compare with the members
    (``res.status == gdjax.Status.DIVERGED``).
    """

    CONVERGED = 1
    MAX_STEPS = 2
    DIVERGED = 3

    @property
    def message(self) -> str:
        """A sentence saying what the status means."""
        return _MESSAGES[self]

    @classmethod
    def of(cls, value: Any) -> Status:
        """The member named (``"converged"``) or numbered (``1``) by ``value``."""
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                pass
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            try:
                return cls(int(value))
            except ValueError:
                pass
        names = ", ".join(str(s) for s in cls)
        raise ValueError(f"status must be one of {names} (or codes 1-3), got {value!r}")

    def __str__(self) -> str:
        return self.name.lower()

    def __format__(self, spec: str) -> str:
        if spec and spec[-1] in "bcdoxXn":  # an integer format asks for the code
            return format(int(self), spec)
        return format(str(self), spec)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return str(self) == other
        return int.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = int.__hash__


_MESSAGES = {
    Status.CONVERGED: "a tolerance was met: the gradient norm fell to tol, or an update changed "
    "the loss by at most ftol",
    Status.MAX_STEPS: "every step was taken without meeting a tolerance",
    Status.DIVERGED: "the loss became non-finite or passed the divergence limit; the parameters "
    "are the last ones before it",
}

ValueAndGrad = Callable[[PyTree, jax.Array, PyTree], tuple[jax.Array, PyTree]]
"""A gradient source: ``value_and_grad(params, t, aux) -> (loss, grads)``.

``t`` is the int32 index of the step whose parameters are evaluated (``fit`` uses it to pick the
mini-batch), ``aux`` any pytree of arrays the source needs (data, batch indices); either may be
ignored.
"""

DIVERGENCE_FACTOR = 1e4
"""The default divergence criterion: a run has diverged once its loss is non-finite or passes
``f0 + DIVERGENCE_FACTOR * max(|f0|, 1)``, ``f0`` its loss at the start. On a quadratic of
curvature ``L``, gradient descent at ``lr * L = 2.02`` passes it within 240 steps (``2.1``: 50),
long before float64 would overflow (near steps 18,000 and 3,700)."""

SEGMENT_STEPS = 64
"""Steps per segment when every step is evaluated: the unit of skipping a stopped batch."""

FAST_SEGMENT_STEPS = 256
"""Steps per segment of unevaluated steps: the unit of checking (once per segment, at its end)
and of replaying a divergence."""


class History(NamedTuple):
    """What a run recorded, one entry every ``record_every`` steps plus the final state.

    Attributes:
      step: int32 ``(R,)``, the step of each record (``0, k, 2k, ..., steps``).
      loss: ``(R,)`` loss at the recorded parameters (the mini-batch loss for ``fit``). Records
        from a run's stop on repeat its final state; a diverged run's loss reads NaN from the
        step it diverged at.
      grad_norm: ``(R,)`` global L2 norm of the gradient there (NaN like ``loss``).
      params: the recorded parameters with a leading ``(R,)`` axis, or ``None``.
      metrics: the recorded ``record_fn(params)`` pytree with a leading ``(R,)`` axis, or ``None``.
    """

    step: jax.Array
    loss: jax.Array
    grad_norm: jax.Array
    params: PyTree = None
    metrics: PyTree = None


class Result(NamedTuple):
    """The outcome of a run: the record of :func:`gdjax.minimize`, :func:`gdjax.fit` and of each
    config of :func:`gdjax.sweep` (whose :class:`gdjax.SweepResult` has the same fields with a
    leading config axis). A pytree of arrays; every field gains a leading axis under ``vmap``.

    Attributes:
      params: final parameters: the last finite ones for a diverged run.
      loss: loss at ``params`` (for ``fit``, the mean over the whole data set).
      best_loss: smallest loss in ``history`` (so every step's with ``record_every=1``); ``inf``
        when no recorded loss is finite.
      grad_norm: global gradient norm at ``params``.
      status: int32 code of a :class:`Status` (a :class:`Status` member when computed eagerly).
      steps: int32, updates applied.
      diverged_at: int32, the step whose update made the loss non-finite or passed the
        divergence limit, or -1.
      history: the decimated :class:`History`.
      aux: with ``has_aux=True``, the objective's auxiliary output at ``params``; else ``None``.
      state: the final untrained state of a run that threads one (``fit(state=...)``: batch
        statistics, say); else ``None``.
    """

    params: PyTree
    loss: jax.Array
    best_loss: jax.Array
    grad_norm: jax.Array
    status: jax.Array
    steps: jax.Array
    diverged_at: jax.Array
    history: History
    aux: PyTree = None
    state: PyTree = None

    def __repr__(self) -> str:
        if np.ndim(self.status) != 0 or isinstance(self.status, jax.core.Tracer):
            shape = np.shape(self.status)
            return f"Result(batch of shape {shape}, fields {', '.join(self._fields)})"
        status = Status.of(int(self.status))
        extra = "" if status != Status.DIVERGED else f", diverged_at={int(self.diverged_at)}"
        return (
            f"Result(status={status}, loss={float(self.loss):.6g}, steps={int(self.steps)}, "
            f"grad_norm={float(self.grad_norm):.3g}{extra}, params={self.params!r})"
        )


class Carry(NamedTuple):
    """The loop's state; ``flag`` is 0 while running, ``t + 1`` once converged at step ``t`` and
    ``-(t + 1)`` once diverged at step ``t``; ``ceiling`` the loss above which the run has
    diverged (see :data:`DIVERGENCE_FACTOR`).

    A run that threads an untrained state (see :class:`Problem`) carries it as ``state``, as it
    stood after the ``t`` forward passes whose gradients made the updates so far, and as
    ``next_state`` the state the forward pass that computed ``grad`` produced (the next update
    commits it); without one both are ``()``."""

    params: PyTree
    opt_state: PyTree
    loss: jax.Array
    grad: PyTree
    flag: jax.Array
    ceiling: jax.Array
    state: PyTree = ()  # () without a state: no leaves, and not a None that reads as an axis
    next_state: PyTree = ()


class Problem(NamedTuple):
    """What every step of a run reads besides its carry.

    ``value`` is the loss alone, ``(params, t, aux) -> loss``, handed to transformations that
    search along a line (``optax.lbfgs``); ``extra`` says whether ``tx.update`` reads the loss
    (``value``, ``value_fn``), in which case every step is evaluated and passes them.

    A *stateful* problem threads a state that is not trained (a model's batch statistics): its
    source is ``(params, t, aux, state) -> (loss, grads, new_state)`` and its ``value``
    ``(params, t, aux, state) -> loss``. Each update's forward pass moves the state once, as a
    hand-written training loop does; the other evaluations (records, checks, the final loss)
    read it without moving it.
    """

    value_and_grad: ValueAndGrad
    tx: optax.GradientTransformation
    aux: PyTree
    gtol: jax.Array | None
    ftol: jax.Array | None
    divergence: jax.Array | None = None
    value: Callable | None = None
    extra: bool = False
    stateful: bool = False

    def evaluate(self, params: PyTree, t: jax.Array, state: PyTree) -> tuple:
        """``(loss, grads, new_state)`` at ``params`` on step ``t``'s data (``new_state`` is
        ``state`` for a problem without one)."""
        if self.stateful:
            return self.value_and_grad(params, t, self.aux, state)
        loss, grad = self.value_and_grad(params, t, self.aux)
        return loss, grad, state

    def loss_fn(self, t: jax.Array, state: PyTree) -> Callable[[PyTree], jax.Array]:
        """The loss alone at step ``t``'s data, ``params -> loss``."""
        if self.stateful:
            return lambda p: self.value(p, t, self.aux, state)
        return lambda p: self.value(p, t, self.aux)


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
    """The global L2 norm of a pytree, as ``optax.tree.norm``, fast under ``vmap``.

    Small leaves are summed element by element: under ``vmap`` a reduction over a few elements
    is a reduction over a tiny minor axis, which XLA:CPU runs several times slower.
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


# --- compiling gdjax's programs ----------------------------------------------------------------

COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
"""XLA options gdjax's own programs are compiled with on the CPU backend: YNNPACK library fusions
for dot products only (as XLA:CPU's defaults do them), not for reductions and element-wise chains.
Under ``vmap``, YNNPACK runs each config's reduction over a few elements many times slower than
XLA's own loops: the 8-D quadratic's early-exit sweep (an evaluated step has the loss's
reduction) 1.4x -> 2.2x-2.7x the hand loop's speed; a dense network's training is unchanged
(benchmarks/RESULTS.md, session 10)."""


@functools.cache
def compiler_options() -> dict[str, Any]:
    """:data:`COMPILER_OPTIONS` where the default backend is XLA:CPU and its jaxlib knows them
    (found once, by compiling a trivial program); else none."""
    if jax.default_backend() != "cpu":
        return {}
    try:
        jax.jit(lambda x: x + 1, compiler_options=COMPILER_OPTIONS).lower(np.float32(0)).compile()
    except Exception:  # noqa: BLE001 (a jaxlib without the option: XLA's own defaults)
        return {}
    return dict(COMPILER_OPTIONS)


def jit(fun: Callable | None = None, /, **kwargs: Any) -> Callable:
    """``jax.jit(fun, **kwargs)`` compiled with :func:`compiler_options` when called eagerly
    (they are found at the first call, when the backend is up: a ``jax.distributed.initialize()``
    before it still works). Inside another transformation (a user's ``jax.jit``, ``vmap`` or
    ``grad``) it is plain ``jax.jit``: JAX takes compiler options only at the top level, where
    the user's own program is compiled. Usable as ``@jit`` and ``@functools.partial(jit, ...)``;
    ``.lower`` as jax's."""
    if fun is None:
        return functools.partial(jit, **kwargs)
    plain = jax.jit(fun, **kwargs)

    @functools.cache
    def compiled() -> Callable:
        options = compiler_options()
        return jax.jit(fun, compiler_options=options, **kwargs) if options else plain

    @functools.wraps(fun)
    def call(*args: Any, **kw: Any) -> Any:
        return (compiled() if _eager() else plain)(*args, **kw)

    call.lower = lambda *args, **kw: compiled().lower(*args, **kw)
    return call


def _eager() -> bool:
    """Whether no transformation is tracing: a call with constant arguments inside a user's
    ``jax.jit`` is traced all the same. (A JAX that says otherwise gets plain ``jax.jit``.)"""
    find = getattr(jax_core, "find_top_trace", None)
    return find is not None and type(find(())).__name__ == "EvalTrace"


# --- batch_any: one decision for a whole vmapped batch -------------------------------------------

_batch_any_p = jax_core.Primitive("gdjax_batch_any")
_batch_any_p.def_impl(jnp.any)
_batch_any_p.def_abstract_eval(lambda x: jax.core.ShapedArray((), jnp.bool_))
batching.primitive_batchers[_batch_any_p] = lambda args, dims: (_batch_any_p.bind(args[0]), None)
mlir.register_lowering(_batch_any_p, mlir.lower_fun(jnp.any, multiple_results=False))


def batch_any(x: jax.Array) -> jax.Array:
    """``jnp.any(x)``, reduced over every ``vmap`` axis too: an unbatched bool.

    A ``lax.cond`` on it stays a branch under ``vmap`` (a batched predicate would turn it into
    a select that runs both sides), so a batch skips work that none of its runs needs. Under
    ``shard_map`` each device decides for its own shard. (The trick is equinox's
    ``unvmap_any``.)
    """
    return _batch_any_p.bind(jnp.asarray(x, jnp.bool_))


_probe_p = jax_core.Primitive("gdjax_batched_probe")
_probe_p.def_impl(lambda x, *, seen: x)
_probe_p.def_abstract_eval(lambda x, *, seen: x)
mlir.register_lowering(_probe_p, mlir.lower_fun(lambda x, *, seen: x, multiple_results=False))


def _probe_rule(args, dims, *, seen):
    seen.hit = True
    return args[0], dims[0]


batching.primitive_batchers[_probe_p] = _probe_rule


class _Seen:
    """A flag set by :func:`batched_leaves`' probe (hashable by identity: a primitive param)."""

    hit = False


def batched_leaves(fn: Callable, *args: Any, in_axes: Any = 0, shapes: bool = False) -> PyTree:
    """Which leaves of ``fn(*args)``'s output depend on the ``vmap``-ped inputs: a pytree of
    bools like the output, found by tracing ``jax.vmap(fn, in_axes)`` once (no computation).
    With ``shapes``, ``(bools, output shapes)``, the shapes with their batch axis.

    ``jax.vmap`` returns every output with a batch axis, even one no input changes (an
    optimiser's step count, say); a program that takes such a carry back in must keep those
    leaves unbatched (``in_axes=None``), or it computes per run what is one number.
    """
    flags = []

    def probed(*a):
        leaves, treedef = jax.tree.flatten(fn(*a))
        flags.extend(_Seen() for _ in leaves)
        flags.append(treedef)
        return [_probe_p.bind(x, seen=f) for x, f in zip(leaves, flags, strict=False)]

    out = jax.eval_shape(jax.vmap(probed, in_axes=in_axes), *args)
    treedef = flags.pop()
    hits = jax.tree.unflatten(treedef, [f.hit for f in flags])
    return (hits, jax.tree.unflatten(treedef, out)) if shapes else hits


# --- the step ------------------------------------------------------------------------------------


def step(c: Carry, t: jax.Array, problem: Problem, *, evaluate: bool, limit: int,
         hold: str = "runs") -> Carry:
    """Step ``t`` of a run: one update for a running run, none for a stopped one.

    Args:
      c: the carry after step ``t - 1``.
      t: int32 index of this step (from 1).
      problem: the gradient source, transformation, data and tolerances.
      evaluate: evaluate the new parameters and test the stop rule: loss non-finite ->
        diverged; ``gtol``/``ftol`` met -> converged. Without it the step is a hand-written
        loop's: the gradient at the current parameters (which XLA fuses with the update), no
        loss, ``flag`` unchanged and the carry's loss and gradient left stale.
      limit: the run's number of steps; a step past it changes nothing (a loop's segments all
        have one length, the last one padded).
      hold: which runs an update leaves where they are, by multiplying it by 0: ``"runs"``,
        every stopped run and any step past ``limit``; ``"padding"``, only a step past
        ``limit``; ``"none"``: a hand-written step (the multiply costs a cheap step 5-25%).
        Without ``evaluate`` nothing stops, so ``"runs"`` is ``"padding"``. A replay holds
        as the steps it replays did, to retrace them bit for bit.

    Returns:
      The carry after step ``t``.
    """
    running = (c.flag == 0) & (t <= limit)
    if evaluate:  # the update commits the state of the forward pass that computed c.grad
        grad, state = c.grad, _hold(running, c.next_state, c.state)
    else:
        _, grad, state = problem.evaluate(c.params, t - 1, c.state)
        if hold != "none":
            state = _hold(t <= limit, state, c.state)
    # a stopped run is evaluated at the step it stopped at: a step-dependent source (a
    # mini-batch) then repeats its stop's values
    t_eval = jnp.where(c.flag == 0, jnp.minimum(t, limit), jnp.abs(c.flag) - 1)
    if problem.extra:  # the loss at c.params and a line search's loss function
        t_prev = jnp.where(c.flag == 0, jnp.minimum(t - 1, limit), jnp.abs(c.flag) - 1)
        updates, opt_state = problem.tx.update(
            grad, c.opt_state, c.params, value=c.loss, grad=grad,
            value_fn=problem.loss_fn(t_prev, c.state))
    else:
        updates, opt_state = problem.tx.update(grad, c.opt_state, c.params)
    if hold == "none":
        params = optax.apply_updates(c.params, updates)
    else:  # multiplied by zero: under vmap XLA:CPU vectorises that, not a select on a per-run
        # predicate (which cost 3-4x the whole step)
        keep = running if hold == "runs" and evaluate else t <= limit
        params = jax.tree.map(lambda x, u: (x + keep.astype(x.dtype) * u).astype(x.dtype),
                              c.params, updates)
    if not evaluate:  # nothing stops inside a segment: it is checked at its end
        return c._replace(params=params, opt_state=opt_state, state=state)
    loss, grad, next_state = problem.evaluate(params, t_eval, state)
    finite = bounded(loss, c.ceiling)
    flag = jnp.where(running & ~finite, -(t + 1), c.flag)
    met = _tolerance_met(loss, grad, c.loss, problem.gtol, problem.ftol)
    if met is not None:
        flag = jnp.where(running & finite & met, t + 1, flag)
    return Carry(params, opt_state, loss, grad, flag, c.ceiling, state, next_state)


def _hold(keep: jax.Array, new: PyTree, old: PyTree) -> PyTree:
    """``new`` where ``keep``, else ``old``: a state moves only with its run's updates."""
    return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, old)


def bounded(loss: jax.Array, ceiling: jax.Array) -> jax.Array:
    """Whether a run with this loss is still running: finite and not above its ceiling."""
    return jnp.isfinite(loss) & (loss <= ceiling)


def ceiling(loss: jax.Array, factor: jax.Array | None) -> jax.Array:
    """The loss above which a run that started at ``loss`` has diverged: ``loss + factor *
    max(|loss|, 1)`` (``inf`` without a factor: non-finite losses only)."""
    loss = lax.stop_gradient(loss)
    if factor is None:
        return jnp.full_like(loss, jnp.inf)
    return loss + factor * jnp.maximum(jnp.abs(loss), 1)


def _tolerance_met(loss, grad, previous_loss, gtol, ftol) -> jax.Array | None:
    met = None
    if gtol is not None:
        met = global_norm(grad) <= gtol
    if ftol is not None and previous_loss is not None:
        change = jnp.abs(loss - previous_loss) <= ftol
        met = change if met is None else met | change
    return met


def _blend(keep: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
    """``where(keep, new, old)`` for a per-run ``keep`` as arithmetic, ``new * k + old * (1 - k)``
    with ``new`` zeroed where non-finite: exact, and vectorised by XLA:CPU under ``vmap``."""
    k = keep.astype(new.dtype)
    return jnp.where(jnp.isfinite(new), new, 0) * k + old * (1 - k)


def _keep_good(c: Carry, t: jax.Array, good: PyTree) -> PyTree:
    """``c.params`` for a run running before step ``t`` or converged at step ``t - 1``, else
    ``good``: decided from the carry alone, so the blend costs a step nothing."""
    keep = (c.flag == 0) | (c.flag == t)
    return jax.tree.map(lambda new, old: _blend(keep, new, old), c.params, good)


def _divisor_near(n: int, most: int, fallback: int | None = None) -> int:
    """The largest divisor of ``n`` up to ``most`` if it is at least a quarter of ``most``,
    else ``fallback`` (``most`` when not given): segments that divide a run need no padding."""
    best = max(d for d in range(1, most + 1) if n % d == 0)
    return best if 4 * best >= most else (most if fallback is None else fallback)


# --- the run -------------------------------------------------------------------------------------


def problem(
    value_and_grad: ValueAndGrad,
    tx: optax.GradientTransformation,
    params: PyTree,
    aux: PyTree = None,
    gtol: Any = None,
    ftol: Any = None,
    divergence: Any = DIVERGENCE_FACTOR,
    value: Callable | None = None,
    stateful: bool = False,
    state: PyTree = None,
    dtype: Any = None,
) -> Problem:
    """The :class:`Problem` of a run, its tolerances and divergence factor in the loss's dtype.

    ``value`` (the loss alone, ``(params, t, aux) -> loss``) defaults to ``value_and_grad``'s
    first output. ``stateful``: the source threads a state (see :class:`Problem`), whose start
    is ``state``. ``dtype``: the loss's, when the caller knows it (else found by tracing the
    source once).
    """
    if dtype is None:
        extra = (state,) if stateful else ()
        dtype = jax.eval_shape(value_and_grad, params, jnp.int32(0), aux, *extra)[0].dtype
    cast = lambda tol: None if tol is None else jnp.asarray(tol, dtype)  # noqa: E731
    if value is None:
        value = lambda p, t, a, *s: value_and_grad(p, t, a, *s)[0]  # noqa: E731
    return Problem(value_and_grad, tx, aux, cast(gtol), cast(ftol), cast(divergence), value,
                   reads_loss(tx, params), stateful)


def reads_loss(tx: optax.GradientTransformation, params: PyTree) -> bool:
    """Whether ``tx.update`` reads the loss (``value`` or ``value_fn``, as ``optax.lbfgs`` and
    ``optax.contrib.reduce_on_plateau`` do), found by tracing one update (no computation)."""
    leaves, treedef = jax.tree.flatten(params)
    shapes = tuple((tuple(np.shape(x)), np.dtype(jnp.result_type(x))) for x in leaves)
    try:
        return _reads_loss(tx, treedef, shapes)
    except TypeError:  # an unhashable transformation
        return _reads_loss.__wrapped__(tx, treedef, shapes)


@functools.lru_cache(maxsize=256)
def _reads_loss(tx: optax.GradientTransformation, treedef: Any, shapes: tuple) -> bool:
    params = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in shapes])
    called = []

    def update(params, value):
        grads = jax.tree.map(jnp.zeros_like, params)

        def value_fn(p):
            called.append(True)
            return value

        try:
            return tx.update(grads, tx.init(params), params, value=value, grad=grads,
                             value_fn=value_fn)
        except TypeError:  # a transformation without extra arguments
            return tx.update(grads, tx.init(params), params)

    dtype = shapes[0][1] if shapes else np.dtype(np.float32)
    closed = jax.make_jaxpr(update)(params, jax.ShapeDtypeStruct((), dtype))
    value_var = closed.jaxpr.invars[-1]
    used = any(value_var in e.invars for e in closed.jaxpr.eqns)
    return bool(called) or used or value_var in closed.jaxpr.outvars


def start(problem: Problem, params: PyTree, opt_state: PyTree, state: PyTree = None) -> Carry:
    """The carry before step 1: the start evaluated and checked in full."""
    state = () if state is None else state
    loss, grad, next_state = problem.evaluate(params, jnp.int32(0), state)
    finite = jnp.isfinite(loss) & all_finite(params) & all_finite(grad)
    flag = jnp.where(finite, 0, -1)
    if problem.gtol is not None:
        flag = jnp.where(finite & (global_norm(grad) <= problem.gtol), 1, flag)
    return Carry(params, opt_state, loss, grad, flag.astype(jnp.int32),
                 ceiling(loss, problem.divergence), state, next_state)


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
    divergence: float | jax.Array | None = DIVERGENCE_FACTOR,
    value: Callable | None = None,
    record_params: bool = False,
    record_fn: Callable[[PyTree], PyTree] | None = None,
    state: PyTree = None,
    stateful: bool = False,
) -> Result:
    """Run up to ``steps`` updates of ``tx`` from ``params``: a pure, traceable function.

    Arguments are checked by the public entry points (:func:`gdjax.minimize`, :func:`gdjax.fit`,
    :func:`gdjax.sweep`), not here.

    Args:
      value_and_grad: the gradient source, ``(params, t, aux) -> (loss, grads)``; see
        :func:`autodiff`.
      tx: any optax transformation.
      params: the start, any pytree of float arrays.
      steps: number of updates (static).
      aux: pytree handed to ``value_and_grad`` at every step.
      opt_state: the optimiser state to start from; ``tx.init(params)`` when ``None``.
      record_every: record every this many steps (static), at steps ``0, k, 2k, ...``; the final
        state is always recorded too.
      gtol: converged once the gradient's global norm is ``<= gtol``; ``None`` disables it.
      ftol: converged once one update changes the loss by ``<= ftol``; ``None`` disables it.
      divergence: diverged once the loss passes ``f0 + divergence * max(|f0|, 1)`` (``f0`` the
        start's loss; :data:`DIVERGENCE_FACTOR`); ``None``: only once it is non-finite.
      value: the loss alone, ``(params, t, aux) -> loss``, for a ``tx`` that reads it.
      record_params: also record the parameters (e.g. for trajectory plots).
      record_fn: ``params -> pytree of arrays`` recorded beside the loss (e.g. a test loss);
        ``(params, state) -> ...`` when ``stateful``.
      state: the start of the untrained state a ``stateful`` source threads.
      stateful: ``value_and_grad`` is ``(params, t, aux, state) -> (loss, grads, new_state)``
        (see :class:`Problem`); ``result.state`` is the final state.

    Returns:
      A :class:`Result`.
    """
    opt_state = tx.init(params) if opt_state is None else opt_state
    loop = Loop(problem(value_and_grad, tx, params, aux, gtol, ftol, divergence, value,
                        stateful, state), steps, record_every, record_params, record_fn)
    first = start(loop.problem, params, opt_state, state)
    carry, buffer = loop.scan(first)
    return loop.finish(loop.replay(first, carry), buffer)


class Loop(NamedTuple):
    """The static shape of a run: how its steps group into segments and records, and what each
    part does. :func:`run` is :func:`start`, :meth:`scan`, :meth:`replay` and :meth:`finish`."""

    problem: Problem
    steps: int
    record_every: int
    record_params: bool = False
    record_fn: Callable | None = None

    @property
    def evaluate(self) -> bool:
        """Whether every step evaluates the loss: a tolerance or a record every step needs it."""
        p = self.problem
        return (p.gtol is not None or p.ftol is not None or p.extra
                or self.record_every == 1)

    @property
    def segment_steps(self) -> int:
        """Steps per segment (a whole number of records' steps when records are that close)."""
        return SEGMENT_STEPS if self.evaluate else FAST_SEGMENT_STEPS

    def snapshot(self, c: Carry, t: jax.Array, loss: jax.Array | None = None) -> tuple:
        """One record of the carry of step ``t``: loss, gradient norm, and the parameters and
        metrics if asked. Without ``evaluate`` the carry's loss and gradient may be stale and are
        evaluated again."""
        grad = c.grad
        if loss is None:
            loss = c.loss
            if not self.evaluate:
                loss, grad, _ = self.problem.evaluate(c.params, t, c.state)
        metrics = None
        if self.record_fn is not None:
            stateful = self.problem is not None and self.problem.stateful
            metrics = self.record_fn(c.params, c.state) if stateful else self.record_fn(c.params)
        return (loss, global_norm(grad), c.params if self.record_params else None, metrics)

    def steps_from(self, c: Carry, t0: jax.Array, n: int) -> Carry:
        """``n`` steps after step ``t0`` (static ``n``; the step count is carried, not scanned
        over)."""

        def one(carry, _):
            c, t = carry
            c = step(c, t + 1, self.problem, evaluate=self.evaluate, limit=self.steps,
                     hold=self.hold)
            return (c, t + 1), None

        return lax.scan(one, (c, t0), length=n)[0][0]

    def blocks(self, c: Carry, t0: jax.Array, n_blocks: int, k: int) -> tuple[Carry, tuple]:
        """``n_blocks`` blocks of ``k`` steps, each recorded at its start."""
        if k == 1:  # every step recorded: the records are the steps' own outputs

            def one(carry, _):
                c, t = carry
                record = self.snapshot(c, t)
                c = step(c, t + 1, self.problem, evaluate=self.evaluate, limit=self.steps,
                         hold=self.hold)
                return (c, t + 1), record

            (c, _), records = lax.scan(one, (c, t0), length=n_blocks)
            return c, records

        def block(c, i):
            record = self.snapshot(c, t0 + i * k)
            return self.steps_from(c, t0 + i * k, k), record

        return lax.scan(block, c, jnp.arange(n_blocks, dtype=jnp.int32))

    def segment(self, c: Carry, t0: jax.Array, n_blocks: int, k: int,
                record: bool) -> tuple[Carry, tuple | None]:
        """``n_blocks * k`` steps after ``t0`` (records at block starts when ``record``), skipped
        when no run is running."""

        def go(c):
            running = c.flag == 0
            if record:
                c, records = self.blocks(c, t0, n_blocks, k)
            else:
                c, records = self.steps_from(c, t0, n_blocks * k), None
            if not self.evaluate:  # the segment's one check, and a current loss and gradient
                t1 = jnp.minimum(t0 + n_blocks * k, self.steps)
                loss, grad, next_state = self.problem.evaluate(c.params, t1, c.state)
                flag = jnp.where(running & ~bounded(loss, c.ceiling), -(t1 + 1), c.flag)
                c = c._replace(loss=loss, grad=grad, flag=flag, next_state=next_state)
            return c, records

        def skip(c):
            records = None
            if record:  # the frozen state, recorded once (a diverged run's is settled later)
                records = jax.tree.map(lambda r: jnp.broadcast_to(r, (n_blocks, *r.shape)),
                                       self.snapshot(c, t0, c.loss))
            return c, records

        def segment(c):
            return lax.cond(batch_any(c.flag == 0), go, skip, c)

        # Differentiating keeps each segment's start and recomputes the segment on the way back.
        return jax.checkpoint(segment, prevent_cse=False)(c)

    @property
    def blocks_count(self) -> int:
        """Blocks of ``record_every`` steps (the last one may be short): one record each."""
        return -(-self.steps // self.record_every)

    @property
    def unit_steps(self) -> int:
        """Steps per unit of the loop: a segment of whole blocks when records are that close,
        else the longest segment that divides a block (the block itself when none is long
        enough: a prime ``record_every``, say)."""
        k, size = self.record_every, self.segment_steps
        if k <= size:  # whole blocks: as many as fit, fewer if they then divide the run
            most = min(size // k, self.blocks_count)
            return k * _divisor_near(self.blocks_count, most)
        return _divisor_near(k, size, fallback=k)

    @property
    def hold(self) -> str:
        """How the steps hold a run (see :func:`step`): every stopped run when they evaluate;
        else only padding past ``steps``, when the last unit has any."""
        if self.evaluate:
            return "runs"
        return "padding" if self.units * self.unit_steps != self.steps else "none"

    @property
    def per_unit(self) -> int:
        """Records per unit (0 or 1 on most units when a block spans several)."""
        return max(1, self.unit_steps // self.record_every)

    @property
    def stride(self) -> int:
        """Units per block when a block spans several, else 1."""
        return max(1, self.record_every // self.unit_steps)

    @property
    def units(self) -> int:
        """Units in the loop (all of one length; the last padded with steps that change
        nothing)."""
        return -(-self.steps // self.unit_steps)

    def unit(self, c: Carry, i: jax.Array) -> tuple[Carry, tuple]:
        """The ``i``-th unit of the loop: the carry after it and its :attr:`per_unit` records
        (when a block spans several units, one record, of use on every :attr:`stride`-th)."""
        k = self.record_every
        if self.stride == 1:
            return self.segment(c, i * self.unit_steps, self.per_unit, k, True)
        t0 = i * self.unit_steps
        shapes = jax.eval_shape(self.snapshot, c, t0)
        record = lax.cond(i % self.stride == 0, lambda c: self.snapshot(c, t0),
                          lambda c: jax.tree.map(lambda r: jnp.zeros(r.shape, r.dtype), shapes),
                          c)
        c, _ = self.segment(c, t0, 1, self.unit_steps, False)
        return c, jax.tree.map(lambda r: r[None], record)

    def scan(self, c: Carry) -> tuple[Carry, tuple]:
        """Every unit of the run: the last carry and the history buffer (see :meth:`empty`)
        with the records at steps ``0, k, 2k, ...`` below ``steps`` written in."""

        def unit(state, i):
            c, buffer = state
            c, records = self.unit(c, i)
            return (c, self.write(buffer, records, i)), None

        state = (c, self.empty(c))
        return lax.scan(unit, state, jnp.arange(self.units, dtype=jnp.int32))[0]

    @property
    def slots(self) -> int:
        """Records a history buffer holds: every unit's (or, when a block spans several units,
        every block's), then the final state's."""
        return (self.units * self.per_unit if self.stride == 1 else self.blocks_count) + 1

    def empty(self, c: Carry) -> tuple:
        """A history buffer of :attr:`slots` records, zeros, for a run with this carry. Units
        write their records into it in place and :meth:`finish` the final state into its last
        slot: a history concatenated after the loop cost a 65,536-config sweep with the
        default history 10% (a copy of every record, and another pass for the best loss)."""
        shapes = jax.eval_shape(self.snapshot, c, jnp.int32(0))
        return jax.tree.map(lambda r: jnp.zeros((self.slots, *r.shape), r.dtype), shapes)

    def write(self, buffer: tuple, records: tuple, i: jax.Array, axis: int = 0) -> tuple:
        """``buffer`` (see :meth:`empty`) with unit ``i``'s records written in (``axis``: the
        buffer's and the records' record axis, 1 with a leading config axis). A unit that does
        not start a block writes nothing."""
        if self.stride == 1:
            return jax.tree.map(
                lambda b, r: lax.dynamic_update_slice_in_dim(b, r, i * self.per_unit, axis=axis),
                buffer, records)
        return lax.cond(
            i % self.stride == 0,
            lambda b: jax.tree.map(
                lambda b, r: lax.dynamic_update_slice_in_dim(b, r, i // self.stride, axis=axis),
                b, records),
            lambda b: b, buffer)

    def advance(self, c: Carry, t0: jax.Array, n: int) -> Carry:
        """``n`` steps after ``t0`` in segments, without records."""
        size = n // -(-n // self.segment_steps)  # the most even split under segment_steps
        count, rest = divmod(n, size)
        c, _ = lax.scan(lambda c, i: (self.segment(c, t0 + i * size, 1, size, False)[0], None),
                        c, jnp.arange(count, dtype=jnp.int32))
        if rest:
            c, _ = self.segment(c, t0 + count * size, 1, rest, False)
        return c

    def marked(self, c: Carry) -> jax.Array:
        """The runs :meth:`replay` runs again: diverged (their parameters are past their last
        finite state, or only known to be in trouble by a segment's end), or carried off by a
        non-finite update after they stopped."""
        diverged_at_start = c.flag == -1  # nothing to replay: the start is all it has
        return ((c.flag < 0) | ~all_finite(c.params)) & ~diverged_at_start

    def replay(self, first: Carry, c: Carry) -> Carry:
        """The :meth:`marked` runs, run again from ``first`` (the carry before step 1) with
        every step evaluated, keeping the last parameters each held while running (or at the
        step it converged): a diverged run ends at its last finite state with the step of its
        divergence. The other runs of a batch wait stopped; segments in which no run is running
        are skipped, so a replay ends with its last divergence."""
        marked = self.marked(c)
        return lax.cond(batch_any(marked), lambda c: self.redo(first, c, marked),
                        lambda c: c, c)

    def redo(self, first: Carry, c: Carry, marked: jax.Array) -> Carry:
        """:meth:`replay`'s work: the marked runs take the replay's parameters and flag."""
        size = min(SEGMENT_STEPS, self.steps)

        def segment(state, i):
            def go(state):
                def one(carry, _):
                    c, good, t = carry
                    good = _keep_good(c, t + 1, good)
                    c = step(c, t + 1, self.problem, evaluate=True, limit=self.steps,
                             hold=self.hold)
                    return (c, good, t + 1), None

                c, good, _ = lax.scan(one, (*state, i * size), length=size)[0]
                return c, good

            return lax.cond(batch_any(state[0].flag == 0), go, lambda s: s, state), None

        start = first._replace(flag=jnp.where(marked, first.flag, 1))  # the others wait
        state, _ = lax.scan(segment, (start, start.params),
                            jnp.arange(-(-self.steps // size), dtype=jnp.int32))
        r, good = state
        good = _keep_good(r, jnp.int32(self.steps + 1), good)
        loss, grad, next_state = self.problem.evaluate(good, self.steps_taken(r.flag), r.state)
        return optax.tree.where(
            marked, Carry(good, c.opt_state, loss, grad, r.flag, c.ceiling, r.state, next_state), c)

    def steps_taken(self, flag: jax.Array) -> jax.Array:
        """Updates applied by a run with this flag (a diverged run's last one is undone)."""
        stop = jnp.abs(flag) - 1
        return jnp.where(flag == 0, self.steps, jnp.maximum(stop - (flag < 0), 0)).astype(jnp.int32)

    def finish(self, c: Carry, buffer: tuple) -> Result:
        """The :class:`Result` of the last carry and the history buffer (see :meth:`empty`):
        statuses, the final state, settled records."""
        steps = self.steps
        flag = c.flag
        status = jnp.where(flag == 0, Status.MAX_STEPS,
                           jnp.where(flag > 0, Status.CONVERGED, Status.DIVERGED))
        status = status.astype(jnp.int32)
        diverged = status == Status.DIVERGED
        stop = jnp.abs(flag) - 1  # the step the run stopped at
        # The carry's loss and gradient are the final state's: evaluated at the step the run
        # stopped at (or the last), or by the replay at its last finite state.
        final = self.snapshot(c, self.steps_taken(flag), c.loss)
        nan = lambda v: jnp.where(diverged, jnp.nan, v)  # noqa: E731
        final_record = (nan(final[0]), nan(final[1]), *final[2:])
        at = record_steps(steps, self.record_every)
        if self.slots != at.size:  # padded units' records past the last block: cut off
            buffer = jax.tree.map(lambda b: b[: at.size], buffer)
        # the final state into the last slot, in place
        history = jax.tree.map(lambda h, f: h.at[-1].set(f), buffer, final_record)

        # From a run's stop on, its records repeat its final state; a diverged run's loss and
        # gradient norm read NaN from its divergence on. (A stopped run's records mostly are
        # that already; a sweep's compacted legs leave them unwritten.)
        def settle(history):
            after = (flag != 0) & (jnp.asarray(at) >= stop)
            return jax.tree.map(lambda h, f: jnp.where(after.reshape(-1, *([1] * f.ndim)), f, h),
                                history, final_record)

        # only where a run stopped (the other branch the identity: XLA copied the buffer through
        # a branch that wrote it, 5-10% of a 65,536-config sweep with the default history)
        history = lax.cond(batch_any(flag != 0), settle, lambda h: h, history)
        best = jnp.min(jnp.where(jnp.isnan(history[0]), jnp.inf, history[0]))
        return Result(
            params=c.params,
            loss=c.loss,
            best_loss=best,
            grad_norm=final[1],
            status=status,
            steps=self.steps_taken(flag),
            diverged_at=jnp.where(diverged, stop, -1).astype(jnp.int32),
            history=History(jnp.asarray(at), *history),
            state=c.state if self.problem.stateful else None,
        )


@functools.lru_cache(maxsize=256)
def record_steps(steps: int, record_every: int) -> np.ndarray:
    """The steps at which :func:`run` records: ``0, k, 2k, ...`` below ``steps``, then ``steps``.

    Cached (every result record carries it) and therefore read-only.
    """
    at = np.append(np.arange(0, steps, record_every), steps).astype(np.int32)
    at.flags.writeable = False
    return at
