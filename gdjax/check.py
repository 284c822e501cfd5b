r"""Gradient checks: autodiff against a finite-difference oracle, with a report that says where.

:func:`check_grads` compares reverse mode (``jax.grad``), forward mode (``jax.jvp``) and, with
``order=2``, Hessian-vector products with finite differences of ``f`` (of its gradient, for the
Hessian), and with each other. Small inputs are checked coordinate by coordinate; large ones along
a few directions of random signs on random blocks of coordinates, at a cost independent of their
size, and a failing direction is then narrowed down to one coordinate by bisection. Either way
the smallest single-coordinate error sure to be caught, the *detection floor*, is computed and
reported (:func:`check_grads` states it). The result is a
:class:`GradCheckReport` naming the worst leaf and index, both values, both errors and the kind of
trouble: a wrong gradient, a point where ``f`` is not differentiable (a kink), or a non-finite
value. :func:`assert_grads_close` turns it into one line of a pytest test.

**Dtypes.** Autodiff runs in the dtype of ``x`` (float64 ``x``, a NumPy array too, inside a local
``jax.enable_x64(True)``), and the report names it (``ad_dtype``).

**The oracle.** Finite differences run in ``fd_dtype`` (float64 by default, inside
``jax.enable_x64(True)``; the global flag is never flipped) with ``x`` cast to it, and use
Richardson extrapolation by default, which also estimates its own error (:mod:`gdjax.finite_diff`).

**The tolerance.** An entry (a partial derivative, a directional derivative, a component of a
Hessian-vector product) passes when

.. math::

    |a - d| \le \mathrm{atol}\, W + \mathrm{rtol}\, |d| + 3 (\delta_{fd} + \delta_{ad})

with :math:`a` the autodiff value, :math:`d` the finite-difference value and

* :math:`\delta_{fd}`: the finite differences' estimated error;
* :math:`\delta_{ad}`: the rounding error of autodiff in its own dtype, *measured*: when
  ``x`` is less precise than ``fd_dtype``, autodiff also runs at ``x`` cast to ``fd_dtype`` and
  :math:`\delta_{ad}` is the difference, so float32 rounding never fails a right float32
  gradient, however the function cancels;
* :math:`W`: 1 for a coordinate, :math:`\|v\|_2` for a direction :math:`v`;
* defaults: ``rtol`` :math:`= \sqrt{\epsilon}` of the autodiff dtype (3.5e-4 for float32, 1.5e-8
  for float64) and ``atol`` :math:`= 10^{-3}\,\mathrm{rtol} \max_i |\partial_i f|`.

**Kinks.** With the ``"richardson"`` oracle the one-sided slopes
:math:`(f(x \pm h e_i) - f(x)) / (\pm h)` come for free at every step of its ladder. For a smooth
``f`` they differ by :math:`h f''`, which shrinks with ``h``; at a kink (``abs`` at 0, a norm at
the origin) they differ by the jump in slope whatever ``h``. An entry whose gap exceeds its
tolerance and does not shrink from the coarsest to the finest step (ratio at least 1/2) is
reported as ``"not differentiable"``. A single step (``"central"``) cannot tell the two apart
(its gap is exactly :math:`h f''` either way), so other methods run no kink test.

A kink *near* ``x`` (a ReLU unit within the step of its threshold; dense along a direction that
moves every weight of a network) or a domain edge (``log`` near 0) puts a kink or a non-finite
value inside the stencil while ``f`` is differentiable at ``x``. So an entry that is not OK at
the default step (kink, non-finite, failing, or with a truncation error above its tolerance) is
computed again at 1/16 and 1/256 of the step, coordinates and directions alike, and takes the
first values where the stencil is smooth; the report counts the entries redone. Only a kink
still there at 1/256 of the step is reported, as at ``x`` or within that step of it; a wrong
gradient stays wrong at every step. A ``step`` given by the user is used as is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from gdjax import finite_diff, inputs

PyTree = Any

__all__ = ["KINDS", "MODES", "GradCheckReport", "assert_grads_close", "check_grads"]

KINDS = ("ok", "not differentiable", "wrong gradient", "non-finite")
"""What a report can say, by precedence: it names the entry of the last kind found, then the one
with the largest error relative to its tolerance."""

MODES = ("rev", "fwd")
"""Autodiff modes a check compares with finite differences: ``jax.grad`` and ``jax.jvp``."""

_SAFETY = 3.0  # multiple of the estimated errors a tolerance allows
_KINK_RATIO = 0.5  # smooth: the slope gap shrinks like h (ratio 1/4 or 1/2); a kink keeps it (~1)
_FINER = (1 / 16, 1 / 256)  # steps of the recheck of a stencil that straddles a kink or an edge
_RANK = {kind: rank for rank, kind in enumerate(KINDS)}

_VALUE = "value of f"
_REV_VS_FD = "reverse mode vs finite differences"
_FWD_VS_FD = "forward mode vs finite differences"
_FWD_VS_REV = "forward vs reverse mode"
_HVP_VS_FD = "Hessian-vector product vs finite differences of the gradient"


@dataclasses.dataclass(frozen=True)
class GradCheckReport:
    """The outcome of :func:`check_grads`: the worst entry found and how it was found.

    Attributes:
      ok: whether every entry passed.
      kind: ``"ok"``, ``"wrong gradient"``, ``"not differentiable"`` or ``"non-finite"``.
      comparison: what was compared at the worst entry, e.g. ``"reverse mode vs finite
        differences"``, ``"forward vs reverse mode"``, ``"Hessian-vector product vs finite
        differences of the gradient"``.
      mode: ``"full"`` (every coordinate) or ``"directions"`` (random directions, then bisection).
      leaf: path of the worst leaf, as :func:`jax.tree_util.keystr` writes it (``""`` when ``x``
        is a single array); ``None`` when the entry is a direction that was not localised.
      index: index of the worst entry within its leaf, or ``None``.
      direction: number of the random direction involved, or ``None``.
      autodiff: the autodiff value at the worst entry.
      finite_diff: the reference value (finite differences, or reverse mode for the forward-mode
        comparison).
      abs_error: ``|autodiff - finite_diff|``.
      rel_error: ``abs_error / |finite_diff|``.
      fd_error: the estimated error of ``finite_diff``.
      ad_rounding: the measured rounding error of ``autodiff`` in its dtype (0 when not measured).
      tolerance: the allowed ``abs_error`` at this entry.
      rtol: relative tolerance used.
      atol: absolute tolerance used.
      ad_dtype: dtype of the autodiff computation.
      fd_dtype: dtype of the finite differences.
      fd_method: finite-difference method.
      step: the finite-difference step at the worst entry.
      n_checked: number of entries compared.
      detection_floor: the smallest relative error in one coordinate of the first-order
        gradient that is sure to fail this check, at every coordinate whose
        :math:`|\\partial_i f|` is at least the median (the floor of :func:`check_grads`);
        ``nan`` when not computed.
      floor_at: ``(leaf, index)`` of the coordinate that sets ``detection_floor``, or ``None``.
      notes: further facts, one sentence each (one-sided slopes at a kink, what was skipped).
    """

    ok: bool
    kind: str
    comparison: str
    mode: str
    leaf: str | None
    index: tuple[int, ...] | None
    direction: int | None
    autodiff: float
    finite_diff: float
    abs_error: float
    rel_error: float
    fd_error: float
    ad_rounding: float
    tolerance: float
    rtol: float
    atol: float
    ad_dtype: str
    fd_dtype: str
    fd_method: str
    step: float
    n_checked: int
    detection_floor: float = math.nan
    floor_at: tuple[str, tuple[int, ...]] | None = None
    notes: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        """``report.ok``: ``assert check_grads(f, x)`` fails on a failing check."""
        return self.ok

    def __str__(self) -> str:
        verdict = "OK" if self.ok else self.kind.upper()
        head = f"gradient check: {verdict} ({self.comparison}"
        if self.comparison == _VALUE:
            return "\n".join([head + ")"] + [f"  note: {note}" for note in self.notes])
        where = "x" + (self.leaf or "")
        if self.index is not None:
            where += f" at index {self.index}"
        if self.direction is not None:
            where += f" (random direction {self.direction})"
        if self.comparison == _FWD_VS_REV:
            reference = f"  reverse mode:   {self.finite_diff: .10e}  ({self.ad_dtype})"
        else:
            reference = (
                f"  finite diff:    {self.finite_diff: .10e}  +- {self.fd_error:.1e} estimated "
                f"({self.fd_method}, {self.fd_dtype}, step {self.step:.2e})"
            )
        lines = [
            f"{head}, {self.mode} mode, {self.n_checked} entries)",
            f"  {'worst' if self.ok else 'failing'} entry:  {where}",
            f"  autodiff:       {self.autodiff: .10e}  ({self.ad_dtype})",
            reference,
            f"  abs error:      {self.abs_error:.3e}  (tolerance {self.tolerance:.3e}: rtol "
            f"{self.rtol:.1e}, atol {self.atol:.1e}, autodiff rounding {self.ad_rounding:.1e})",
            f"  rel error:      {self.rel_error:.3e}",
        ]
        return "\n".join(lines + [f"  note: {note}" for note in self.notes])


def check_grads(
    f: Callable[..., Any],
    x: PyTree,
    *,
    args: Any = (),
    has_aux: bool = False,
    order: int = 1,
    modes: tuple[str, ...] = MODES,
    fd_method: str = "richardson",
    step: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    fd_dtype: str = "float64",
    n_directions: int = 4,
    full_threshold: int = 2000,
    seed: int = 0,
    chunk_size: int | None = None,
) -> GradCheckReport:
    """Compare the autodiff derivatives of a scalar function with finite differences.

    With ``x`` of at most ``full_threshold`` coordinates, every partial derivative from
    ``jax.grad`` (``"rev"`` in ``modes``) and from ``jax.jacfwd`` (``"fwd"``) is compared with the
    finite-difference one, and the two modes with each other. Above it, ``n_directions``
    directions :math:`v` are checked instead, each random signs on its own random block of the
    coordinates (the blocks cover them all), :math:`\\langle \\nabla f, v \\rangle` and
    ``jax.jvp`` against the finite-difference derivative along :math:`v`, at a cost independent
    of the size of ``x``; a failing direction is then localised to one coordinate by bisection
    (directional derivatives along ``v`` restricted to blocks of coordinates). ``order=2`` also
    compares Hessian-vector products (reverse over reverse mode) along ``n_directions`` random
    directions with finite differences of ``jax.grad(f)``, component by component. The module
    docstring gives the tolerance rule and the kink test; a stencil that straddles a kink or a
    domain edge near ``x`` (a ReLU unit near its threshold) is redone at finer steps.

    Forward mode is skipped, with a note, for a function JAX cannot differentiate in forward mode
    (one using ``jax.custom_vjp``) when reverse mode is also asked for.

    **Detection floor.** A relative error :math:`r` in one coordinate :math:`i` of the gradient
    (a hand-written rule wrong there) is sure to fail the check once :math:`r |\\partial_i f|`
    exceeds the tolerance of the one entry it enters plus that entry's observed error:

    * full mode: :math:`r > \\mathrm{rtol} + (\\mathrm{atol} + 3(\\delta_{fd} + \\delta_{ad}) +
      |a_i - d_i|) / |\\partial_i f|`, about :math:`\\mathrm{rtol}\\,(1 + 10^{-3} \\max_j
      |\\partial_j f| / |\\partial_i f|)`: :math:`\\sqrt{\\epsilon}` of the dtype (3.5e-4 in
      float32, 1.5e-8 in float64) whatever ``n``;
    * directions mode: the coordinates are shuffled into :math:`B = \\min(`\\ ``n_directions``
      :math:`, n)` blocks of :math:`m \\approx n / B` and each direction is random signs on one
      block, so coordinate :math:`i` enters one entry with weight 1: :math:`r > (\\mathrm{atol}
      \\sqrt{m} + \\mathrm{rtol} |\\langle \\nabla f, v \\rangle| + 3(\\delta_{fd} + \\delta_{ad})
      + |a - d|) / |\\partial_i f|`, about :math:`\\mathrm{rtol} \\sqrt{n / B}\\, g_{rms} /
      |\\partial_i f|` (:math:`g_{rms}` the gradient's root mean square): it grows like
      :math:`\\sqrt{n / B}` and with the spread :math:`g_{rms} / |\\partial_i f|`. For example
      about 1e-2 at a median coordinate of a float32 gradient of n = 3,000 with B = 4, and 1e-5
      for float64 at n = 100,000, where a 0.1% error is caught and located in about a second.

    ``report.detection_floor`` is this bound computed from the check's own entries, the largest
    over the coordinates whose :math:`|\\partial_i f|` is at least the median
    (``report.floor_at`` names the one); a passing report says that smaller errors could hide.
    A coordinate with a smaller gradient has a floor larger in proportion. To lower it, lower
    ``rtol``, or check every coordinate (``full_threshold`` at least the size of ``x``: six
    evaluations of ``f`` per coordinate); more ``n_directions`` shrink the blocks but also meet
    more large block sums, and help little.

    A function that cannot be traced (Python control flow on values, ``if x > 0:``, in ``f`` or
    in its custom rule) is checked as ``jax.test_util.check_grads`` checks it: autodiff runs op
    by op, where the branches see concrete values, and the finite differences call ``f`` once
    per point on the host; the report says so. ``order=2`` is then refused.

    **Dtype.** The check runs in the dtype of ``x``: float64 ``x`` (a NumPy array too) is
    differentiated in float64 inside a local ``jax.enable_x64(True)``, whatever the global flag,
    and ``report.ad_dtype`` says which dtype autodiff used (``report.fd_dtype`` the oracle's).

    Args:
      f: scalar function ``f(x, *args)``; with ``has_aux``, a function returning a pair
        ``(value, aux)`` (``jax.grad``'s convention) whose value is checked.
      x: point; a pytree. Its inexact arrays (floating or complex dtype; Python floats too)
        are checked; every other leaf (an ``equinox`` module's activation function, ``None``,
        Python ints and bools, integer arrays) is passed to ``f`` unchanged, so a model is
        passed as it is. ``report.leaf`` is the path of the leaf in ``x`` itself (e.g.
        ``.layers[0].weight``).
      args: extra arguments of ``f``, not differentiated (a batch of data, say): a tuple of
        pytrees of arrays (a non-tuple is one argument). They are traced, so checking again
        with new values reuses the compilation. Floating ones follow ``x`` into the oracle's
        dtype.
      has_aux: whether ``f`` returns ``(value, aux)``; ``aux`` is ignored.
      order: 1 (gradients) or 2 (also Hessian-vector products).
      modes: autodiff modes to check, a non-empty subset of ``("rev", "fwd")``.
      fd_method: finite-difference method (:data:`gdjax.finite_diff.METHODS`); ``"richardson"``
        is the most accurate and the only one that detects kinks.
      step: finite-difference step, or ``None`` for the method's default.
      rtol: relative tolerance, or ``None`` for the default of the module docstring.
      atol: absolute tolerance, or ``None`` for the default.
      fd_dtype: dtype of the finite differences, ``"float64"`` or ``"float32"``.
      n_directions: number of random directions (of coordinate blocks) in directions mode,
        and of random directions for ``order=2``.
      full_threshold: largest number of coordinates checked one by one.
      seed: seed of the random directions.
      chunk_size: coordinates per vmapped batch of the full check (see
        :func:`gdjax.finite_diff.numerical_gradient`).

    Returns:
      A :class:`GradCheckReport`; ``str(report)`` is a readable summary.

    Raises:
      TypeError: ``f`` is not callable, ``x`` holds no floating-point array (the message names
        what it holds), or an argument has the wrong type.
      ValueError: ``x`` is empty, ``f`` does not return a scalar, or an argument is out of range
        (an unknown ``fd_method`` or mode, a non-positive ``step``, a negative ``rtol``...), or
        ``order=2`` for a function that cannot be traced.
      TypeError: ``x`` is a tuple of ``f``'s arguments (the call of ``jax.test_util``): a tuple
        is a valid point, so it is never unpacked; the message shows the right call.

    Example:
      >>> import jax.numpy as jnp
      >>> from gdjax.check import check_grads
      >>> report = check_grads(lambda x: jnp.sum(jnp.sin(x) * x), jnp.arange(3.0))
      >>> report.ok, report.kind
      (True, 'ok')
    """
    with inputs.precision(x):
        return _check_grads(
            f,
            x,
            args=args,
            has_aux=has_aux,
            order=order,
            modes=modes,
            fd_method=fd_method,
            step=step,
            rtol=rtol,
            atol=atol,
            fd_dtype=fd_dtype,
            n_directions=n_directions,
            full_threshold=full_threshold,
            seed=seed,
            chunk_size=chunk_size,
        )


def _check_grads(f, x, *, args, has_aux, order, **kwargs) -> GradCheckReport:
    # the trained part: None at static leaves keeps each array's keystr path, so the report
    # names the leaf as it sits in the caller's x
    x, rebuild = inputs.trainable("x", x)
    has_aux = inputs.flag("has_aux", has_aux)
    args = _extra_args(args)
    if not callable(f):
        raise TypeError(f"f must be callable, got f={f!r}")
    f = _Bound(inputs.bind(finite_diff.static(f), rebuild), has_aux, args)
    untraceable = None
    try:
        _scalar_function(f, x)
    except _UNTRACEABLE as error:
        untraceable = error
        _scalar_value(f, x)
    config = _Config.validated(x, order=order, **kwargs)
    if untraceable is None:
        try:
            return _checked(_Problem(f, x, config))
        except _UNTRACEABLE as error:  # in a custom rule, which abstract evaluation skips
            untraceable = error
    if order == 2:
        raise ValueError(
            "order=2 differences jax.grad(f) at many points at once (vmap), which f's Python "
            f"control flow on values rules out ({type(untraceable).__name__}); check with "
            "order=1, or write the branch with jnp.where or jax.lax.cond, got order=2"
        ) from untraceable
    try:
        return _checked(_Problem(f, x, config, untraceable=untraceable))
    except _UNTRACEABLE as error:
        raise TypeError(
            "f cannot be differentiated by JAX, even op by op: it turns a traced value into a "
            f"NumPy array or a Python number ({type(error).__name__}; np.asarray, float(x), "
            f".item()); write f with jax.numpy, got f={f.f!r}"
        ) from error


def _checked(problem: _Problem) -> GradCheckReport:
    if not np.isfinite(problem.f0):
        return problem.non_finite_value()
    candidates = problem.first_order()
    if problem.config.order == 2:
        candidates.append(problem.second_order())
    return problem.report(max(candidates, key=lambda c: c.key))


_UNTRACEABLE = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
)
"""What tracing a function with Python control flow on values (``if x > 0:``) raises."""


def _scalar_value(f: _Bound, x) -> None:
    """The checks of :func:`gdjax.inputs.scalar_function`, on ``f(x)`` evaluated eagerly."""
    _aux_pair(f, f.f(x, *f.args))
    out = f(x)
    shape = getattr(out, "shape", None)
    if shape != ():
        raise ValueError(
            f"f must return a scalar, got output of shape {shape} "
            "(reduce it, e.g. with jnp.sum or jnp.mean)"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"f must return a floating-point scalar, got dtype {out.dtype}")


@jax.tree_util.register_pytree_node_class
class _Bound:
    """``f(x, *args)``, or its value alone with ``has_aux``, as a function of ``x``.

    A pytree whose leaves are ``args`` (traced, so new values reuse the compilation) and whose
    static part is ``f``. With ``eager``, ``f`` is called outside the trace, on concrete arrays,
    at each point a kernel needs (a host callback): for a function that cannot be traced
    (Python control flow on values), under the same jitted, vmapped kernels.
    """

    __hash__ = None  # holds arrays: no cache may key on it (and keep them alive)

    def __init__(self, f, has_aux: bool, args: tuple, eager: bool = False):
        self.f, self.has_aux, self.args, self.eager = f, has_aux, args, eager

    def tree_flatten(self):
        return (self.args,), (self.f, self.has_aux, self.eager)

    @classmethod
    def tree_unflatten(cls, static, children):
        f, has_aux, eager = static
        return cls(f, has_aux, children[0], eager)

    def value(self, x, args):
        out = self.f(x, *args)
        return out[0] if self.has_aux else out

    def __call__(self, x):
        if not self.eager:
            return self.value(x, self.args)
        dtype = jnp.result_type(*jax.tree.leaves(x))

        def host(x, args):
            wide = jax.enable_x64(True) if dtype in (np.float64, np.complex128) else None
            with wide or contextlib.nullcontext():
                x, args = jax.tree.map(jnp.asarray, (x, args))
                return np.asarray(self.value(x, args), dtype)

        shape = jax.ShapeDtypeStruct((), dtype)
        return jax.pure_callback(host, shape, x, self.args, vmap_method="sequential")

    def eagerly(self) -> _Bound:
        return _Bound(self.f, self.has_aux, self.args, eager=True)

    def cast(self, dtype) -> _Bound:
        """The floating-point ``args`` cast to ``dtype`` (``None``: as they are)."""
        if dtype is None:
            return self

        def cast(a):
            return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a

        return _Bound(self.f, self.has_aux, jax.tree.map(cast, self.args), self.eager)


def _extra_args(args) -> tuple:
    """``args`` as a tuple of arrays (a non-tuple is one argument)."""
    if args is None:
        return ()
    if not isinstance(args, tuple):
        args = (args,)
    for path, leaf in jax.tree_util.tree_flatten_with_path(args)[0]:
        if not isinstance(leaf, (jax.Array, np.ndarray, np.generic, numbers.Number)):
            raise TypeError(
                "args must hold arrays or numbers (they are traced like x), got leaf "
                f"args{jax.tree_util.keystr(path)}={leaf!r}"
            )
    return jax.tree.map(jnp.asarray, args)


def _scalar_function(f: _Bound, x) -> None:
    """:func:`gdjax.inputs.scalar_function` of ``f(x, *args)`` (its value, with ``has_aux``),
    and a pointer to the right call for the jax-style ``check_grads(f, (x,))``: a tuple is a
    valid point, so it is never unpacked on a guess."""
    try:
        if f.has_aux:
            _aux_pair(f, inputs.abstract(f.f, x, *f.args))
            inputs.scalar_function("f", f, x)
        else:
            inputs.scalar_function("f", f.f, x, *f.args)
    except _UNTRACEABLE:
        raise
    except Exception as error:
        if not isinstance(x, tuple) or f.args or f.has_aux or isinstance(f.f, inputs.Bound):
            raise
        try:
            inputs.scalar_function("f", f.f, *x)
        except Exception:
            raise error from None
        raise TypeError(
            "check_grads(f, x) takes the point itself, not a tuple of f's arguments as "
            "jax.test_util.check_grads does: f(x) failed while f(*x) works; call "
            f"check_grads(f, x[0]) for one argument, or check_grads(lambda a: f(*a), x) for "
            f"several; got x as a tuple of {len(x)} (f(x) raised {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})"
        ) from error


def _aux_pair(f: _Bound, out) -> None:
    if f.has_aux and not (isinstance(out, (tuple, list)) and len(out) == 2):
        if isinstance(out, (tuple, list)):
            kind = f"a {type(out).__name__} of length {len(out)}"
        else:
            kind = f"an array of shape {getattr(out, 'shape', None)}"
        raise ValueError(f"with has_aux=True, f must return a pair (value, aux), got {kind}")


def assert_grads_close(f: Callable[..., Any], x: PyTree, **kwargs: Any) -> None:
    """Raise ``AssertionError`` with the report's text unless :func:`check_grads` passes.

    One line in a test verifies a hand-written derivative, e.g. a ``jax.custom_vjp``.

    Args:
      f: scalar function ``f(x, *args)``, as in :func:`check_grads`.
      x: point; a pytree whose inexact arrays are checked (float64 ones in float64), other
        leaves passed to ``f`` unchanged, as in :func:`check_grads`.
      **kwargs: keyword arguments of :func:`check_grads` (``args``, ``has_aux``, ...).

    Raises:
      AssertionError: the check failed; the message is ``str(report)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from gdjax.check import assert_grads_close
      >>> assert_grads_close(lambda x: jnp.sum(x**3), jnp.array([1.0, -2.0]))
    """
    report = check_grads(f, x, **kwargs)
    if not report.ok:
        raise AssertionError(str(report))


# --- configuration ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Config:
    order: int
    modes: tuple[str, ...]
    fd_method: str
    step: float | None
    rtol: float
    atol: float | None
    ad_dtype: np.dtype
    fd_dtype: np.dtype
    n_directions: int
    full: bool
    seed: int
    chunk_size: int | None

    @classmethod
    def validated(
        cls,
        x,
        *,
        order,
        modes,
        fd_method,
        step,
        rtol,
        atol,
        fd_dtype,
        n_directions,
        full_threshold,
        seed,
        chunk_size,
    ) -> _Config:
        if isinstance(order, bool) or order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order=}")
        if isinstance(modes, str) or not modes or any(m not in MODES for m in modes):
            raise ValueError(f"modes must be a non-empty subset of {MODES}, got {modes=}")
        finite_diff.check_method(fd_method)
        if order == 2 and fd_method == "complex_step":
            raise ValueError(
                "order=2 differences jax.grad(f), which takes no complex input; use "
                f"fd_method='richardson' or 'central', got {fd_method=}"
            )
        step = finite_diff.check_step(step)
        rtol = inputs.optional_tolerance("rtol", rtol)
        atol = inputs.optional_tolerance("atol", atol)
        try:
            oracle_dtype = np.dtype(fd_dtype)
        except TypeError:
            oracle_dtype = None
        if oracle_dtype not in (np.float32, np.float64):
            raise ValueError(f"fd_dtype must be 'float32' or 'float64', got {fd_dtype=}")
        n_directions = inputs.positive_int("n_directions", n_directions)
        if (
            isinstance(full_threshold, bool)
            or not isinstance(full_threshold, numbers.Integral)
            or full_threshold < 0
        ):
            raise ValueError(
                f"full_threshold must be a non-negative integer, got {full_threshold=}"
            )
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an integer, got {seed=}")
        if chunk_size is not None:
            inputs.positive_int("chunk_size", chunk_size)
        # The least precise leaf sets the tolerance, and its rounding is measured.
        ad_dtype = max(
            (np.dtype(leaf.dtype) for leaf in jax.tree.leaves(x)),
            key=lambda dtype: np.finfo(dtype).eps,
        )
        n = sum(leaf.size for leaf in jax.tree.leaves(x))
        return cls(
            order=order,
            modes=tuple(modes),
            fd_method=fd_method,
            step=step,
            rtol=math.sqrt(np.finfo(ad_dtype).eps) if rtol is None else rtol,
            atol=atol,
            ad_dtype=ad_dtype,
            fd_dtype=oracle_dtype,
            n_directions=n_directions,
            full=n <= full_threshold,
            seed=int(seed),
            chunk_size=chunk_size,
        )

    @property
    def measures_rounding(self) -> bool:
        """Whether autodiff is less precise than the oracle, so its rounding must be measured."""
        return np.finfo(self.ad_dtype).eps > np.finfo(self.fd_dtype).eps

    def precision(self) -> contextlib.AbstractContextManager:
        """The context the oracle runs in."""
        return jax.enable_x64(True) if self.fd_dtype == np.float64 else contextlib.nullcontext()


# --- entries and their verdicts ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Entries:
    """Comparisons of ``ad`` with a reference ``fd``: flat float64 arrays of one length.

    ``width`` is W of the tolerance rule; ``kink`` marks entries where the oracle found a kink and
    ``kink_ratio`` is its slope gap over the tolerance; ``slopes`` holds the right and left slopes
    at the finest step.
    """

    ad: np.ndarray
    fd: np.ndarray
    fd_error: np.ndarray
    rounding: np.ndarray
    width: np.ndarray
    step: np.ndarray
    kink: np.ndarray
    kink_ratio: np.ndarray
    slopes: np.ndarray

    @classmethod
    def concat(cls, parts: list[_Entries]) -> _Entries:
        return cls(
            **{
                field.name: np.concatenate([getattr(p, field.name) for p in parts])
                for field in dataclasses.fields(cls)
            }
        )

    def take(self, i: int) -> _Entries:
        """Entry ``i``, as entries of length 1."""
        return _Entries(
            **{
                field.name: getattr(self, field.name)[i : i + 1]
                for field in dataclasses.fields(self)
            }
        )

    def minus(self, part: _Entries) -> _Entries:
        """The entries of the rest of a direction whose ``part`` is known (length 1 each).

        Derivatives are linear in the direction, so the values subtract and the errors add.
        """
        nan = np.full(1, np.nan)
        return _Entries(
            ad=self.ad - part.ad,
            fd=self.fd - part.fd,
            fd_error=self.fd_error + part.fd_error,
            rounding=self.rounding + part.rounding,
            width=np.sqrt(np.maximum(self.width**2 - part.width**2, 0)),
            step=self.step,
            kink=self.kink & ~part.kink,
            kink_ratio=self.kink_ratio,
            slopes=np.stack([nan, nan], -1),
        )

    def verdicts(self, rtol: float, atol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per entry: the rank of its kind in ``_RANK``, ``error / tolerance``, the tolerance."""
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            error = np.abs(self.ad - self.fd)
            tolerance = (
                atol * self.width
                + rtol * np.abs(self.fd)
                + _SAFETY * (self.fd_error + self.rounding)
            )
            nonfinite = ~(np.isfinite(self.ad) & np.isfinite(self.fd)) & ~self.kink
            wrong = ~nonfinite & ~self.kink & ~(error <= tolerance)
            ratio = np.where(self.kink, self.kink_ratio, error / tolerance)
        rank = np.select(
            [nonfinite, wrong, self.kink],
            [_RANK["non-finite"], _RANK["wrong gradient"], _RANK["not differentiable"]],
            _RANK["ok"],
        )
        return rank, np.where(np.isnan(ratio), np.inf, ratio), tolerance


def _vs_fd(ad, ad_ref, oracle, width, kinks, *, rounding=None) -> _Entries:
    """Autodiff ``ad`` (and the same in the oracle's dtype, ``ad_ref``) against the oracle."""
    return _Entries(
        ad=ad,
        fd=oracle["value"],
        fd_error=oracle["error"],
        rounding=np.abs(ad - ad_ref) if rounding is None else rounding,
        width=width,
        step=oracle["step"],
        kink=kinks[0],
        kink_ratio=kinks[1],
        slopes=oracle["slopes"],
    )


def _between(fwd, fwd_ref, rev, rev_ref, width, kinks, *, rev_rounding=None) -> _Entries:
    """Forward mode against reverse mode: both rounding errors count, no truncation error."""
    nan = np.full(len(fwd), np.nan)
    if rev_rounding is None:
        rev_rounding = np.abs(rev - rev_ref)
    return _Entries(
        ad=fwd,
        fd=rev,
        fd_error=np.zeros(len(fwd)),
        rounding=np.abs(fwd - fwd_ref) + rev_rounding,
        width=width,
        step=nan,
        kink=kinks[0],
        kink_ratio=kinks[1],
        slopes=np.stack([nan, nan], -1),
    )


def _kinks(oracle, width, rtol, atol) -> tuple[np.ndarray, np.ndarray]:
    """The kink test of the module docstring on each oracle entry: (is a kink, gap / tolerance)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        tolerance = atol * width + rtol * np.abs(oracle["value"]) + _SAFETY * oracle["error"]
        gap = np.abs(oracle["gap_fine"])
        kink = (
            np.isfinite(gap)
            & (gap > tolerance)
            & (gap > 10 * oracle["noise"])
            & (gap >= _KINK_RATIO * np.abs(oracle["gap_coarse"]))
        )
        return kink, gap / tolerance


@dataclasses.dataclass(frozen=True)
class _Candidate:
    """The worst entry of one comparison."""

    comparison: str
    kind: str
    ratio: float
    entries: _Entries
    i: int
    tolerance: float
    atol: float
    n_checked: int
    flat_index: int | None  # the coordinate of x (or of the HVP), when known
    direction: int | None
    notes: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[int, float]:
        return _RANK[self.kind], self.ratio

    @property
    def error(self) -> float:
        return float(abs(self.entries.ad[self.i] - self.entries.fd[self.i]))


def _worst(comparison, entries, rtol, atol, *, n_checked, flat_index=None, direction=None):
    """The worst entry of ``entries``: by kind, then by error over tolerance."""
    rank, ratio, tolerance = entries.verdicts(rtol, atol)
    i = int(np.lexsort((ratio, rank))[-1])
    return _Candidate(
        comparison=comparison,
        kind=KINDS[rank[i]],
        ratio=float(ratio[i]),
        entries=entries,
        i=i,
        tolerance=float(tolerance[i]),
        atol=atol,
        n_checked=n_checked,
        flat_index=None if flat_index is None else flat_index(i),
        direction=None if direction is None else direction(i),
    )


# --- the problem: f at x, its autodiff derivatives and the oracle ------------------------------


class _Problem:
    """``f`` at ``x``: its value, gradient and the comparisons with the oracle.

    ``untraceable``: the error tracing ``f`` raised, if it did. Autodiff then runs op by op
    (``jax.disable_jit``), where Python control flow sees concrete values, and the
    finite-difference kernels evaluate ``f`` through a host callback (:class:`_Bound`).
    """

    def __init__(self, f, x, config: _Config, untraceable: Exception | None = None):
        self.x, self.config = x, config
        self.f = f if untraceable is None else f.eagerly()  # for the oracle's kernels
        self.ad_f = f  # for the autodiff kernels
        self.autodiff = jax.disable_jit if untraceable else contextlib.nullcontext
        leaves_with_paths, _ = jax.tree_util.tree_flatten_with_path(x)
        self.paths = [jax.tree_util.keystr(path) for path, _ in leaves_with_paths]
        self.shapes = [leaf.shape for _, leaf in leaves_with_paths]
        self.starts = np.cumsum([0] + [leaf.size for _, leaf in leaves_with_paths])
        self.n = int(self.starts[-1])
        self.notes: list[str] = []
        self.rechecked: list[tuple[int, float]] = []  # (entries redone, smooth, at scale)
        self.floor: tuple[float, int | None] = (math.nan, None)  # set by first_order
        self.forward = "fwd" in config.modes  # cleared for a function without forward mode
        self.reverse = "rev" in config.modes
        if untraceable is not None:
            self.notes.append(
                f"f cannot be traced ({type(untraceable).__name__}: Python control flow on "
                "values, e.g. `if x > 0:`), so autodiff ran op by op and finite differences "
                "called f once per point, eagerly (slower than the traced check)"
            )
        with self.autodiff():
            f0, grad = _value_and_grad(f, x)
            self.f0 = float(f0)
            self.grad = np.asarray(grad, np.float64)
            self.grad_ref = self.grad
            if config.measures_rounding:
                with config.precision():
                    ref = _gradient(f, x, dtype=config.fd_dtype)
                    self.grad_ref = np.asarray(ref, np.float64)
        self.atol = _default_atol(config, self.grad_ref)
        if config.fd_method != "richardson":
            self.notes.append(
                f"no kink test: fd_method={config.fd_method!r} has no ladder of +-h pairs"
            )

    def report(self, candidate: _Candidate) -> GradCheckReport:
        e, i = candidate.entries, candidate.i
        ad, fd = float(e.ad[i]), float(e.fd[i])
        notes = list(candidate.notes)
        if candidate.kind == "not differentiable":
            notes.insert(
                0,
                (
                    f"one-sided slopes at step {e.step[i]:.1e}: right {e.slopes[i, 0]:.6e}, "
                    f"left {e.slopes[i, 1]:.6e}; their gap does not shrink with the step, a kink: "
                    "f has no derivative here, whatever autodiff says"
                    + (" (at x, or closer to it than that step)" if self.rechecked else "")
                ),
            )
        if candidate.kind == "non-finite" and np.isfinite(ad) and not np.isfinite(fd):
            notes.insert(
                0,
                f"the finite differences are not finite: f is nan or inf at a point of the "
                f"stencil (step {e.step[i]:.1e}) though finite at x: x is closer than the step "
                "to an edge of f's domain (log or sqrt at 0), or f overflows there"
                + ("; so it is at 1/256 of the default step" if self.rechecked else "")
                + "; pass a smaller step",
            )
        notes += self.recheck_notes()
        floor, floor_at = self.floor
        floor_leaf, floor_index = self.locate(floor_at)
        if candidate.kind == "ok" and floor_at is not None:
            notes.append(
                f"detection floor {floor:.1e} (at x{floor_leaf} index {floor_index}): a relative "
                "error above it in any one coordinate whose |gradient| is at least the median "
                "would fail this check; a smaller one could hide (to lower the floor, lower rtol; "
                "in directions mode, raise full_threshold above the size of x to check every "
                "coordinate, at 6 evaluations of f per coordinate)"
            )
        leaf, index = self.locate(candidate.flat_index)
        return GradCheckReport(
            ok=candidate.kind == "ok",
            kind=candidate.kind,
            comparison=candidate.comparison,
            mode="full" if self.config.full else "directions",
            leaf=leaf,
            index=index,
            direction=candidate.direction,
            autodiff=ad,
            finite_diff=fd,
            abs_error=abs(ad - fd),
            rel_error=abs(ad - fd) / abs(fd) if fd else math.inf,
            fd_error=float(e.fd_error[i]),
            ad_rounding=float(e.rounding[i]),
            tolerance=candidate.tolerance,
            rtol=self.config.rtol,
            atol=candidate.atol,
            ad_dtype=str(self.config.ad_dtype),
            fd_dtype=str(self.config.fd_dtype),
            fd_method=self.config.fd_method,
            step=float(e.step[i]),
            n_checked=candidate.n_checked,
            detection_floor=floor,
            floor_at=None if floor_at is None else (floor_leaf, floor_index),
            notes=tuple(notes + self.notes),
        )

    def recheck_notes(self) -> list[str]:
        """What :meth:`refined` redid, in one sentence."""
        done = {scale: 0 for scale in _FINER}
        for count, scale in self.rechecked:
            done[scale] += count
        if not sum(done.values()):
            return []
        return [
            f"{sum(done.values())} entries met a kink or an edge of f's domain inside the "
            "finite-difference stencil at the default step (closer to x than the step, e.g. a "
            "ReLU unit near its threshold): rechecked where f is smooth on the stencil, "
            + " and ".join(f"{n} at 1/{round(1 / h)} of the step" for h, n in done.items() if n)
        ]

    def non_finite_value(self) -> GradCheckReport:
        nan = math.nan
        c = self.config
        return GradCheckReport(
            ok=False,
            kind="non-finite",
            comparison=_VALUE,
            mode="full" if c.full else "directions",
            leaf=None,
            index=None,
            direction=None,
            autodiff=nan,
            finite_diff=nan,
            abs_error=nan,
            rel_error=nan,
            fd_error=nan,
            ad_rounding=nan,
            tolerance=nan,
            rtol=c.rtol,
            atol=self.atol,
            ad_dtype=str(c.ad_dtype),
            fd_dtype=str(c.fd_dtype),
            fd_method=c.fd_method,
            step=nan,
            n_checked=1,
            notes=(f"f(x) = {self.f0}",),
        )

    def locate(self, flat_index: int | None) -> tuple[str | None, tuple[int, ...] | None]:
        """The leaf path and the index within the leaf of a flat coordinate."""
        if flat_index is None:
            return None, None
        leaf = int(np.searchsorted(self.starts, flat_index, side="right")) - 1
        index = np.unravel_index(flat_index - self.starts[leaf], self.shapes[leaf])
        return self.paths[leaf], tuple(int(k) for k in index)

    def directions(self, salt: int) -> PyTree:
        """``n_directions`` standard-normal directions in ``x``'s dtypes, stacked on axis 0.

        NumPy arrays: picking one out costs no compilation.
        """
        rng = np.random.default_rng([self.config.seed, salt])
        d = self.config.n_directions
        return jax.tree.map(
            lambda leaf: rng.standard_normal((d, *leaf.shape)).astype(leaf.dtype), self.x
        )

    def both(self, kernel: Callable, *args: Any) -> tuple[np.ndarray, np.ndarray]:
        """``kernel`` in the autodiff dtype and, if rounding is measured, in the oracle's."""
        with self.autodiff():
            value = kernel(self.ad_f, self.x, *args, dtype=None)
            value = np.atleast_1d(np.asarray(value, np.float64))
            if not self.config.measures_rounding:
                return value, value
            with self.config.precision():
                ref = kernel(self.ad_f, self.x, *args, dtype=self.config.fd_dtype)
                return value, np.atleast_1d(np.asarray(ref, np.float64))

    def forward_mode(self, kernel: Callable, *args: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`both` of a forward-mode kernel; ``None`` if ``f`` has no forward mode.

        A ``jax.custom_vjp`` function has none: a fact to note, not an error, when reverse mode is
        checked too.
        """
        if not self.forward:
            return None
        try:
            return self.both(kernel, *args)
        except TypeError as e:
            if "custom_vjp" not in str(e) or not self.reverse:
                raise
        self.forward = False
        self.notes.append(
            "forward mode not checked: f uses jax.custom_vjp, which JAX cannot differentiate in "
            "forward mode"
        )
        return None

    def refined(self, oracle_at: Callable, width: np.ndarray, ads: list) -> dict:
        """The oracle, with entries whose stencil straddles a kink or a domain edge redone.

        ``oracle_at(scale)`` is the oracle at ``scale`` times the step; ``ads`` holds the
        ``(autodiff, autodiff in the oracle's dtype, rounding or None)`` arrays compared with it.
        An entry that is not OK at the default step (a kink, a non-finite or a failing value, or
        an estimated truncation error above the tolerance) is computed again at 1/16 and then
        1/256 of the step, and takes the first values where the stencil is smooth (finite, no
        kink) if they are more accurate or differ: a kink or an edge closer to ``x`` than the
        step (a ReLU unit near its threshold) is then no longer inside the stencil, while a
        wrong gradient stays wrong. A kink still found at the finest step is at ``x`` or within
        that step of it. A given ``step`` is honoured as is: nothing is redone.
        """
        c = self.config
        oracle = oracle_at(1.0)
        if c.step is not None or c.fd_method != "richardson":
            return oracle

        def rough(o):  # a kink or a non-finite value inside the stencil
            return _kinks(o, width, c.rtol, self.atol)[0] | ~np.isfinite(o["value"])

        def blurred(o):  # a truncation error that swamps the tolerance: a kink the test missed
            with np.errstate(invalid="ignore"):
                wide = _SAFETY * o["error"] > c.rtol * np.abs(o["value"]) + self.atol * width
                return wide & (o["error"] > 10 * o["noise"])

        kinks = _kinks(oracle, width, c.rtol, self.atol)
        first_rough = rough(oracle)
        bad = first_rough | blurred(oracle)
        for ad, ad_ref, rounding in ads:
            entries = _vs_fd(ad, ad_ref, oracle, width, kinks, rounding=rounding)
            bad |= entries.verdicts(c.rtol, self.atol)[0] > 0
        if not bad.any():
            return oracle
        oracle = {name: a.copy() for name, a in oracle.items()}
        for scale in _FINER:
            finer = oracle_at(scale)
            smooth = ~rough(finer) & ~blurred(finer)
            with np.errstate(invalid="ignore"):
                more_accurate = finer["error"] < oracle["error"]
                moved = ~(
                    np.abs(finer["value"] - oracle["value"])
                    <= _SAFETY * (finer["error"] + oracle["error"])
                )
            # A smooth stencil that agrees with the first keeps the more accurate values; at the
            # last step a rough one replaces a worse one.
            last_resort = (scale == _FINER[-1]) & np.isfinite(finer["value"])
            redo = bad & (
                (smooth & (first_rough | moved | more_accurate))
                | (~smooth & last_resort & (first_rough | more_accurate))
            )
            for name, a in finer.items():
                oracle[name][redo] = a[redo]
            self.rechecked.append((int((bad & smooth & redo).sum()), scale))
            bad &= ~smooth
            if not bad.any():
                break
        return oracle

    # -- first order, every coordinate ----------------------------------------------------------

    def first_order(self) -> list[_Candidate]:
        return self._full() if self.config.full else self._along_directions()

    def _full(self) -> list[_Candidate]:
        c = self.config

        def oracle_at(scale):
            with c.precision():
                raw = _fd_coordinates(
                    self.f,
                    self.x,
                    c.step,
                    np.float64(scale),
                    method=c.fd_method,
                    chunk_size=c.chunk_size,
                    dtype=c.fd_dtype,
                )
            return _oracle(c.fd_method, *raw)

        width = np.ones(self.n)
        forward = self.forward_mode(_forward_gradient)
        ads = [(self.grad, self.grad_ref, None)] if self.reverse else []
        if forward is not None:
            ads.append((*forward, None))
        oracle = self.refined(oracle_at, width, ads)
        kinks = _kinks(oracle, width, c.rtol, self.atol)
        worst = functools.partial(
            _worst, rtol=c.rtol, atol=self.atol, n_checked=self.n, flat_index=lambda i: i
        )
        candidates = []
        if self.reverse:
            candidates.append(
                worst(_REV_VS_FD, _vs_fd(self.grad, self.grad_ref, oracle, width, kinks))
            )
        if forward is not None:
            candidates.append(worst(_FWD_VS_FD, _vs_fd(*forward, oracle, width, kinks)))
            if self.reverse:
                candidates.append(
                    worst(_FWD_VS_REV, _between(*forward, self.grad, self.grad_ref, width, kinks))
                )
        # The floor: entry i fails for sure once r |d_i| exceeds its tolerance plus its error.
        slack = self.slack(candidates[0].entries)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.floor = _floor(slack / np.abs(oracle["value"]), np.abs(oracle["value"]))
        return candidates

    # -- first order, random directions and bisection -------------------------------------------

    def _along_directions(self) -> list[_Candidate]:
        c = self.config
        v, block = self.blocks()
        rows = _rows(v)
        comparisons = [_REV_VS_FD] if self.reverse else []
        if self.forward:
            comparisons += [_FWD_VS_FD, _FWD_VS_REV] if self.reverse else [_FWD_VS_FD]
        per_direction = [
            self._along(_take(v, k), rows[k], 0, self.n, comparisons) for k in range(len(rows))
        ]
        candidates = []
        for comparison in per_direction[0]:
            entries = _Entries.concat([found[comparison] for found in per_direction])
            candidate = _worst(
                comparison,
                entries,
                c.rtol,
                self.atol,
                n_checked=len(rows),
                direction=lambda i: i,
            )
            candidates.append(self._localised(candidate, v, rows))
        # Coordinate i is in block k alone, with v_i = +-1: an error r in it moves the block's
        # entry by r |g_i|, which fails for sure beyond the entry's tolerance plus its error.
        slack = self.slack(_Entries.concat([found[comparisons[0]] for found in per_direction]))
        g = np.abs(self.grad_ref)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.floor = _floor(slack[block] / g, g)
        return candidates

    def blocks(self) -> tuple[PyTree, np.ndarray]:
        """Directions of random signs on random blocks of coordinates, and each one's block.

        The ``n`` coordinates are shuffled and cut into ``min(n_directions, n)`` blocks of
        near-equal size; direction ``k`` is ``+-1`` on block ``k`` and 0 elsewhere, stacked on
        axis 0 of leaves in ``x``'s dtypes (NumPy arrays: picking one out compiles nothing).
        """
        rng = np.random.default_rng([self.config.seed, 1])
        d = min(self.config.n_directions, self.n)
        block = np.empty(self.n, np.int64)
        block[rng.permutation(self.n)] = np.arange(self.n) % d
        rows = np.zeros((d, self.n))
        rows[block, np.arange(self.n)] = rng.choice([-1.0, 1.0], self.n)
        leaves, treedef = jax.tree.flatten(self.x)
        parts = np.split(rows, self.starts[1:-1], axis=1)
        return treedef.unflatten(
            [
                part.reshape(d, *leaf.shape).astype(leaf.dtype)
                for part, leaf in zip(parts, leaves, strict=True)
            ]
        ), block

    def slack(self, entries: _Entries) -> np.ndarray:
        """Per entry, tolerance plus error: the least change of ``ad`` sure to fail it."""
        _, _, tolerance = entries.verdicts(self.config.rtol, self.atol)
        return tolerance + np.abs(entries.ad - entries.fd)

    def _along(self, v_k, row_k, lo, hi, comparisons, *, unit=False) -> dict[str, _Entries]:
        """``comparisons`` along ``v_k`` (ones if ``unit``) restricted to coordinates [lo, hi)."""
        c = self.config
        args = (v_k, np.int32(lo), np.int32(hi), unit)

        def oracle_at(scale):
            with c.precision():
                raw = _fd_along(
                    self.f,
                    self.x,
                    *args,
                    c.step,
                    np.float64(scale),
                    method=c.fd_method,
                    dtype=c.fd_dtype,
                )
            return _oracle(c.fd_method, *raw)

        w = np.ones(hi - lo) if unit else row_k[lo:hi]
        grad, grad_ref = self.grad[lo:hi], self.grad_ref[lo:hi]
        rev = np.sum(w * grad, keepdims=True)
        rev_ref = np.sum(w * grad_ref, keepdims=True)
        rev_rounding = np.sum(np.abs(w * (grad - grad_ref)), keepdims=True)
        width = np.sqrt(np.sum(w**2, keepdims=True))
        forward = None
        if {_FWD_VS_FD, _FWD_VS_REV} & set(comparisons):
            forward = self.forward_mode(_jvp_along, *args)
        ads = [(rev, rev_ref, rev_rounding)] if _REV_VS_FD in comparisons else []
        if forward is not None:
            ads.append((*forward, None))
        oracle = self.refined(oracle_at, width, ads)
        kinks = _kinks(oracle, width, c.rtol, self.atol)
        found = {}
        if _REV_VS_FD in comparisons:
            found[_REV_VS_FD] = _vs_fd(rev, rev_ref, oracle, width, kinks, rounding=rev_rounding)
        if forward is not None:
            if _FWD_VS_FD in comparisons:
                found[_FWD_VS_FD] = _vs_fd(*forward, oracle, width, kinks)
            if _FWD_VS_REV in comparisons:
                found[_FWD_VS_REV] = _between(
                    *forward, rev, rev_ref, width, kinks, rev_rounding=rev_rounding
                )
        return found

    def _localised(self, candidate: _Candidate, v: PyTree, rows: np.ndarray) -> _Candidate:
        """Narrow a failing direction down to one coordinate by bisection.

        Each step differences along the direction restricted to the left half of the current
        range; the right half's values follow by linearity (the whole minus the left), so a step
        costs one directional derivative.
        """
        if candidate.kind == "ok":
            return candidate
        c, k, comparison = self.config, candidate.direction, candidate.comparison
        v_k = _take(v, k)
        found = (
            f"random direction {k} failed ({candidate.kind}, abs error {candidate.error:.3e}, "
            f"tolerance {candidate.tolerance:.3e})"
        )
        nonfinite = np.flatnonzero(~np.isfinite(self.grad))
        lo, hi, steps = 0, self.n, 0
        if candidate.kind == "non-finite" and nonfinite.size:
            lo, hi = int(nonfinite[0]), int(nonfinite[0]) + 1  # no search needed
        whole = candidate.entries.take(k)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            left = self._along(v_k, rows[k], lo, mid, [comparison])[comparison]
            halves = _Entries.concat([whole.minus(left), left])
            i = _worst(comparison, halves, c.rtol, self.atol, n_checked=2).i
            whole = halves.take(i)
            lo, hi = (lo, mid) if i == 1 else (mid, hi)
            steps += 1
        # At the end, difference along the unit vector: the entries are partial derivatives.
        final = _worst(
            comparison,
            self._along(v_k, rows[k], lo, hi, [comparison], unit=True)[comparison],
            c.rtol,
            self.atol,
            n_checked=candidate.n_checked,
            flat_index=lambda i: lo,
            direction=lambda i: k,
        )
        if final.key[0] < candidate.key[0]:
            return dataclasses.replace(
                candidate, notes=(found + "; no single coordinate fails on its own",)
            )
        return dataclasses.replace(
            final, notes=(found + f"; localised by bisection in {steps} steps",)
        )

    # -- second order ---------------------------------------------------------------------------

    def second_order(self) -> _Candidate:
        c = self.config
        v = self.directions(salt=2)
        hvp, hvp_ref = self.both(_hvps, v)
        with c.precision():
            values, g0, delta = _fd_gradient_along(
                self.f, self.x, v, c.step, method=c.fd_method, dtype=c.fd_dtype
            )
        values, g0, delta = np.asarray(values), np.asarray(g0), np.asarray(delta)
        d, n = hvp.shape
        oracle = [
            finite_diff.estimate(c.fd_method, values[j], g0, delta[j], True, xp=np)
            for j in range(d)
        ]
        nan = np.full(d * n, np.nan)
        entries = _Entries(
            ad=hvp.ravel(),
            fd=np.concatenate([value for value, _ in oracle]),
            fd_error=np.concatenate([error for _, error in oracle]),
            rounding=np.abs(hvp - hvp_ref).ravel(),
            width=np.ones(d * n),
            step=np.repeat(np.abs(delta[:, 0]), n),
            kink=np.zeros(d * n, bool),
            kink_ratio=nan,
            slopes=np.stack([nan, nan], -1),
        )
        return _worst(
            _HVP_VS_FD,
            entries,
            c.rtol,
            _default_atol(c, hvp_ref),
            n_checked=d * n,
            flat_index=lambda i: i % n,
            direction=lambda i: i // n,
        )


def _floor(floors: np.ndarray, magnitude: np.ndarray) -> tuple[float, int | None]:
    """The largest of ``floors`` over the entries of at least the median ``magnitude``, and
    the entry where it is."""
    if not np.isfinite(magnitude).any():
        return math.nan, None
    with np.errstate(invalid="ignore"):
        floors = np.where(magnitude >= np.nanmedian(magnitude), floors, -np.inf)
    i = int(np.argmax(np.where(np.isnan(floors), np.inf, floors)))
    return float(floors[i]), i


def _default_atol(config: _Config, reference: np.ndarray) -> float:
    """``atol``, or its default: ``1e-3 rtol`` times the largest finite entry of ``reference``."""
    if config.atol is not None:
        return config.atol
    finite = np.abs(reference[np.isfinite(reference)])
    return 1e-3 * config.rtol * float(finite.max()) if finite.size else 0.0


def _oracle(method, values, f0, delta) -> dict[str, np.ndarray]:
    """The finite-difference value, its error, and the kink test's slopes, gaps and noise.

    Combined on the host from the stencil values, in their dtype (whose ``eps`` sets the rounding
    estimates); every entry comes out as a float64 array.
    """
    values, f0, delta = np.asarray(values), np.asarray(f0), np.asarray(delta)
    value, error = finite_diff.estimate(method, values, f0, delta, True, xp=np)
    nan = np.full(np.shape(value), np.nan)
    oracle = dict(
        value=value,
        error=error,
        step=np.broadcast_to(np.abs(delta[0]), np.shape(value)),
        gap_coarse=nan,
        gap_fine=nan,
        noise=nan,
        slopes=np.stack([nan, nan], -1),
    )
    if method == "richardson":
        slopes = finite_diff.one_sided_slopes(values, f0, delta)
        (right_coarse, left_coarse), (right, left) = slopes[0], slopes[-1]
        f_max = np.maximum(np.abs(values).max(axis=0), np.abs(f0))
        oracle.update(
            gap_coarse=right_coarse - left_coarse,
            gap_fine=right - left,
            noise=4 * np.finfo(values.dtype).eps * f_max / np.abs(delta[-1]),
            slopes=np.stack([right, left], -1),
        )
    return {
        name: np.asarray(a, np.float64).reshape(-1, 2)
        if name == "slopes"
        else np.atleast_1d(np.asarray(a, np.float64))
        for name, a in oracle.items()
    }


# --- jitted kernels: f is a _Bound, whose function is static and whose args are traced, so
# checking one function again reuses the compilation. ``dtype`` (static) casts x and the
# floating args first; None keeps their own dtypes. The finite-difference kernels
# return the raw stencil values: combining them on the host keeps the compiled programs small.


@jax.jit
def _value_and_grad(f, x):
    value, grad = jax.value_and_grad(f)(x)
    return value, _flat(grad)


@functools.partial(jax.jit, static_argnames="dtype")
def _gradient(f, x, *, dtype):
    return _flat(jax.grad(f.cast(dtype))(optax.tree.cast(x, dtype)))


@functools.partial(jax.jit, static_argnames="dtype")
def _forward_gradient(f, x, *, dtype):
    return _flat(jax.jacfwd(f.cast(dtype))(optax.tree.cast(x, dtype)))


@functools.partial(jax.jit, static_argnames="dtype")
def _jvp_along(f, x, v, lo, hi, unit, *, dtype):
    f, x = f.cast(dtype), optax.tree.cast(x, dtype)
    return jax.jvp(f, (x,), (optax.tree.cast(_block_direction(v, lo, hi, unit), dtype),))[1]


@functools.partial(jax.jit, static_argnames="dtype")
def _hvps(f, x, v, *, dtype):
    """Hessian-vector products, reverse over reverse mode (fine for custom_vjp and custom_jvp)."""
    f, x, v = f.cast(dtype), optax.tree.cast(x, dtype), optax.tree.cast(v, dtype)

    def hvp(v):
        return _flat(jax.grad(lambda y: optax.tree.vdot(jax.grad(f)(y), v))(x))

    return jax.vmap(hvp)(v)


@functools.partial(jax.jit, static_argnames=("method", "chunk_size", "dtype"))
def _fd_coordinates(f, x, step, scale, *, method, chunk_size, dtype):
    """Stencil values along every coordinate, ``f(x)`` and the displacements.

    ``scale`` multiplies the step (a traced scalar: the kink and edge test's finer steps reuse
    the compilation).
    """
    f, x = f.cast(dtype), optax.tree.cast(x, dtype)
    leaves = jax.tree.leaves(x)
    h = finite_diff.flat_step(leaves, _step_power(method), step) * scale
    offsets = finite_diff.stencil(method, with_error=True)
    values = finite_diff.coordinate_values(f, x, h, offsets, chunk_size)
    return values, f(x), finite_diff.displacements(leaves, h, offsets, rounded=step is None)


@functools.partial(jax.jit, static_argnames=("method", "dtype"))
def _fd_along(f, x, v, lo, hi, unit, step, scale, *, method, dtype):
    """Stencil values along ``v`` restricted to [lo, hi), ``f(x)`` and the displacements."""
    f, x = f.cast(dtype), optax.tree.cast(x, dtype)
    w = optax.tree.cast(_block_direction(v, lo, hi, unit), dtype)
    offsets = finite_diff.stencil(method, with_error=True)
    t = scale * finite_diff.direction_step(
        jax.tree.leaves(x), jax.tree.leaves(w), _step_power(method), step
    )
    values = finite_diff.direction_values(f, x, w, t, offsets)
    return values, f(x), finite_diff.nominal_displacements(offsets, t)


@functools.partial(jax.jit, static_argnames=("method", "dtype"))
def _fd_gradient_along(f, x, v, step, *, method, dtype):
    """Stencil values of ``jax.grad(f)`` along each direction, the gradient, displacements."""
    f, x, v = f.cast(dtype), optax.tree.cast(x, dtype), optax.tree.cast(v, dtype)
    offsets = finite_diff.stencil(method, with_error=True)
    grad = jax.grad(f)

    def along(w):
        t = finite_diff.direction_step(
            jax.tree.leaves(x), jax.tree.leaves(w), _step_power(method), step
        )
        values = jax.vmap(_flat)(finite_diff.direction_values(grad, x, w, t, offsets))
        return values, finite_diff.nominal_displacements(offsets, t)

    values, delta = jax.vmap(along)(v)
    return values, _flat(grad(x)), delta


def _step_power(method: str) -> float:
    """The oracle's default step is ``eps**a max(1, |x_i|)`` with this ``a``.

    For ``"richardson"`` a = 1/4, a smaller step than :func:`gdjax.finite_diff.numerical_gradient`'s
    ``eps**(1/7)``: the ``h**6`` truncation stays negligible, the rounding error ``~eps**(3/4)``
    stays far below any tolerance, and the oracle resolves functions that vary much faster than
    the scale of ``x`` (``sin(x)`` at ``|x| = 1000``).
    """
    return 1 / 4 if method == "richardson" else finite_diff.STEP_POWER[method]


def _block_direction(v, lo, hi, unit):
    """``v`` (all ones if ``unit``) restricted to the flat coordinates ``lo <= i < hi``."""
    leaves, treedef = jax.tree.flatten(v)
    starts = np.cumsum([0] + [leaf.size for leaf in leaves[:-1]])
    out = []
    for leaf, start in zip(leaves, starts, strict=True):
        i = start + jnp.arange(leaf.size).reshape(leaf.shape)
        out.append(jnp.where((i >= lo) & (i < hi), jnp.where(unit, 1, leaf), 0).astype(leaf.dtype))
    return treedef.unflatten(out)


# --- pytree helpers -------------------------------------------------------------------------


def _rows(v: PyTree) -> np.ndarray:
    """Stacked directions as rows of flat float64 coordinates: shape (d, n)."""
    leaves = jax.tree.leaves(v)
    return np.concatenate(
        [np.asarray(leaf, np.float64).reshape(len(leaf), -1) for leaf in leaves], axis=1
    )


def _take(v: PyTree, k: int) -> PyTree:
    return jax.tree.map(lambda a: a[k], v)


def _flat(tree: PyTree) -> jax.Array:
    return ravel_pytree(tree)[0]
