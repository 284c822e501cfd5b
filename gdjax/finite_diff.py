"""Finite-difference derivatives of functions of pytrees: the oracle that cross-checks autodiff.

Every estimator evaluates ``f`` at points ``x + s h_i e_i`` that move one coordinate ``i`` by a
multiple ``s`` of its step ``h_i`` (the method's *stencil*). The evaluations are batched with
:func:`jax.vmap` over a chunk of coordinates and the chunks run one after another in
:func:`jax.lax.map`, so memory is bounded by ``chunk_size`` evaluations whatever the size of ``x``,
and there is no Python loop over coordinates. Everything is traceable: the functions accept a
traced ``x`` inside :func:`jax.jit`, :func:`jax.lax.scan` and :func:`jax.vmap`.

The public API is :func:`numerical_gradient` and :func:`directional_derivative`; the building
blocks after them (stencil values, steps, the Richardson tableau) are shared with
:mod:`gdjax.check`.

Methods and their truncation error (``f`` smooth, step ``h``):

==================  ============================================================  ==============
``method``          estimate of :math:`\\partial f / \\partial x_i`                 error
==================  ============================================================  ==============
``"central"``       :math:`(f(x + h e_i) - f(x - h e_i)) / (2h)`                  :math:`O(h^2)`
``"forward"``       :math:`(f(x + h e_i) - f(x)) / h`                             :math:`O(h)`
``"backward"``      :math:`(f(x) - f(x - h e_i)) / h`                             :math:`O(h)`
``"richardson"``    central differences at :math:`h, h/2, h/4`, extrapolated      :math:`O(h^6)`
``"complex_step"``  :math:`\\operatorname{Im} f(x + i h e_i) / h`                  :math:`O(h^2)`
==================  ============================================================  ==============
"""

from __future__ import annotations

import functools
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gdjax import inputs

PyTree = Any

__all__ = ["METHODS", "directional_derivative", "numerical_gradient"]

METHODS = ("central", "forward", "backward", "richardson", "complex_step")

RICHARDSON_LEVELS = 3
"""Number of central differences (at ``h, h/2, h/4``) the ``"richardson"`` tableau extrapolates."""

# Offsets s of the points x + s h e_i each method evaluates f at (f(x) itself aside).
_STENCIL = {
    "central": (1.0, -1.0),
    "forward": (1.0,),
    "backward": (-1.0,),
    "complex_step": (1j,),
    "richardson": tuple(s * 0.5**k for k in range(RICHARDSON_LEVELS) for s in (1.0, -1.0)),
}

# The truncation error is O(h^p) with p = _ORDER[method].
_ORDER = {"central": 2, "forward": 1, "backward": 1, "complex_step": 2}

STEP_POWER = {
    "central": 1 / 3,
    "forward": 1 / 2,
    "backward": 1 / 2,
    "richardson": 1 / (2 * RICHARDSON_LEVELS + 1),
    "complex_step": 2.0,
}
"""Default step ``h_i = eps**a max(1, |x_i|)`` with ``a = STEP_POWER[method]``.

``a`` balances the truncation error ``O(h^p)`` against the rounding error ``O(eps / h)`` of the
difference, ``h ~ eps**(1 / (p + 1))``; the extrapolated Richardson estimate is ``O(h^6)``, so
``h ~ eps**(1/7)``. The complex step has no difference to round, so its ``h`` only has to make
``h^2`` negligible.
"""

_TARGET_CHUNK_ELEMENTS = 2**14
"""Default chunk: about this many perturbed input elements per vmapped batch.

128 KiB of float64, which stays in cache: on a 2-core CPU it was the fastest or near it from
d = 100 to 3000 for elementwise sums and for matrix products (larger batches spill, batches of
one coordinate turn a matrix product into matrix-vector products). On a GPU a larger
``chunk_size`` fills the device better. :func:`default_chunk_size` keeps at least 8 coordinates
per batch.
"""


def numerical_gradient(
    f: Callable[[PyTree], jax.Array],
    x: PyTree,
    *,
    method: str = "central",
    step: float | None = None,
    chunk_size: int | None = None,
    return_error: bool = False,
) -> PyTree:
    r"""Finite-difference gradient of a scalar function of a pytree.

    For each coordinate :math:`x_i` of every leaf of ``x``, with :math:`e_i` its unit vector,
    ``method="central"`` computes

    .. math::

        \frac{\partial f}{\partial x_i} \approx \frac{f(x + h_i e_i) - f(x - h_i e_i)}{2 h_i},

    which, with ``step=1e-4``, is the seed notes' ``numerical_gradient`` with the same
    floating-point operations (bit for bit in float64, given the same values of ``f``). The
    module docstring lists the other methods. ``"richardson"`` extrapolates central differences
    at :math:`h, h/2, h/4` with a Neville tableau; ``"complex_step"`` needs an ``f`` that is
    real-analytic and written with operations that accept complex input (``jnp.abs`` and
    comparisons do not).

    The default step follows the dtype's machine epsilon :math:`\epsilon` and the scale of each
    coordinate, :math:`h_i = \epsilon^{a} \max(1, |x_i|)`, with :math:`a = 1/3` (central),
    :math:`1/2` (forward, backward), :math:`1/7` (richardson) and :math:`2` (complex step). A given
    ``step`` is used as is for every coordinate.

    Args:
      f: scalar function of ``x``, ``f(x) -> ()``-shaped real array.
      x: point; a pytree (array, dict, tuple, an ``equinox`` module...). Its inexact arrays
        (floating or complex dtype; Python floats too) are differentiated; every other leaf (an
        activation function, ``None``, Python ints and bools, integer arrays) is passed to ``f``
        unchanged.
      method: one of ``"central"``, ``"forward"``, ``"backward"``, ``"richardson"``,
        ``"complex_step"``.
      step: the step :math:`h`, a positive finite number, or ``None`` for the default above.
      chunk_size: number of coordinates per vmapped batch of evaluations; ``None`` picks one that
        keeps a batch near :math:`2^{14}` input elements (cache-sized on a CPU; raise it on a
        GPU), and at least 8 coordinates. Peak memory grows with it, the number of sequential
        batches shrinks with it.
      return_error: also return an estimate of the absolute error of each entry: the Richardson
        tableau's last correction for ``"richardson"``, otherwise the difference between the
        estimates at ``h`` and ``h/2`` scaled by :math:`2^p / (2^p - 1)` for an :math:`O(h^p)`
        method (this doubles the cost); plus a bound on the rounding error of the evaluations.

    Returns:
      The gradient estimate, a pytree with the structure, shapes and dtypes of ``x``, with
      ``None`` in place of each leaf that is not differentiated (as ``equinox.filter_grad``
      returns it); with ``return_error=True``, the pair ``(gradient, error)`` of two such pytrees.

    The computation runs in the dtype of ``x`` and the result comes back in it: float64 ``x``
    (a NumPy array too) runs inside a local ``jax.enable_x64(True)``, whatever the global flag.

    Warns:
      RuntimeWarning: an eager call's estimate is nan or inf somewhere; it says whether ``f(x)``
        itself is not finite or ``f`` is not finite at a point of the stencil (``x`` closer than
        the step to an edge of ``f``'s domain, e.g. ``log`` at 0 with the wide Richardson steps).
        Under ``jit``, ``vmap`` or ``scan`` the values are unknown and the estimate is nan there.

    Raises:
      TypeError: ``f`` is not callable, ``x`` holds no floating-point array (the message names
        what it holds), or ``step`` or ``chunk_size`` has the wrong type.
      ValueError: ``x`` has no coordinates, ``f`` does not return a real scalar, ``method`` is
        unknown, ``step`` is not positive and finite, or ``chunk_size`` is not positive.

    Example:
      >>> import jax.numpy as jnp
      >>> from gdjax.finite_diff import numerical_gradient
      >>> g = numerical_gradient(lambda x: jnp.sum(x**2), jnp.array([-3.0, 4.0]))
      >>> [round(float(d), 3) for d in g]  # 2 x
      [-6.0, 8.0]

    References:
      L. F. Richardson, The deferred approach to the limit, Phil. Trans. R. Soc. A 226 (1927).
      W. Squire and G. Trapp, Using complex variables to estimate derivatives of real functions,
      SIAM Review 40(1), 1998. https://doi.org/10.1137/S003614459631241X
    """
    with inputs.precision(x):
        x, rebuild = inputs.trainable("x", x)
        f = inputs.bind(f, rebuild)  # a function of the trained part
        inputs.scalar_function("f", f, x)
        check_method(method)
        if chunk_size is not None:
            inputs.positive_int("chunk_size", chunk_size)
        step = check_step(step)
        out = _numerical_gradient(
            static(f), x, step, method=method, chunk_size=chunk_size, return_error=return_error
        )
        _warn_if_not_finite(out[0] if return_error else out, f, x, method, step)
        return out


def directional_derivative(
    f: Callable[[PyTree], PyTree],
    x: PyTree,
    v: PyTree,
    *,
    method: str = "central",
    step: float | None = None,
    return_error: bool = False,
) -> PyTree:
    r"""Finite-difference derivative of ``f`` at ``x`` along the direction ``v``.

    With ``method="central"``,

    .. math::

        D_v f(x) \approx \frac{f(x + t v) - f(x - t v)}{2 t},

    which for a scalar ``f`` approximates :math:`\langle \nabla f(x), v \rangle` at the cost of two
    evaluations whatever the size of ``x``. ``f`` may return any pytree of arrays: the result is
    then a finite-difference Jacobian-vector product (for ``f = jax.grad(g)``, a Hessian-vector
    product). The other methods are those of :func:`numerical_gradient`.

    The default step is :math:`t = \epsilon^{a} \min_i \max(1, |x_i|) / |v_i|`, so no coordinate
    moves further than the default step of :func:`numerical_gradient` would move it. A given
    ``step`` is used as ``t`` as is.

    Args:
      f: function of ``x`` returning a pytree of floating-point arrays.
      x: point; a pytree whose inexact arrays are moved, other leaves passed to ``f`` unchanged
        (as in :func:`numerical_gradient`).
      v: direction; a pytree with the structure and shapes of ``x``, given in full (its leaves
        at ``x``'s static leaves are ignored) or with ``None`` there (the structure of
        :func:`numerical_gradient`'s result).
      method: as in :func:`numerical_gradient`.
      step: the step :math:`t`, a positive finite number, or ``None`` for the default above.
      return_error: also return an error estimate, as in :func:`numerical_gradient`.

    Returns:
      The derivative, a pytree with the structure of ``f``'s output; with ``return_error=True``,
      the pair ``(derivative, error)``. In the dtype of ``x``, as :func:`numerical_gradient`.

    Warns:
      RuntimeWarning: a non-finite estimate, as :func:`numerical_gradient`.

    Raises:
      TypeError: ``f`` is not callable, ``x`` holds no floating-point array, a trained leaf of
        ``v`` is not floating point, or ``step`` has the wrong type.
      ValueError: ``x`` has no coordinates, ``v`` does not match ``x``, ``method`` is unknown, or
        ``step`` is not positive and finite.

    Example:
      >>> import jax.numpy as jnp
      >>> from gdjax.finite_diff import directional_derivative
      >>> x, v = jnp.array([1.0, 2.0]), jnp.array([1.0, -1.0])
      >>> d = directional_derivative(lambda x: jnp.sum(x**3), x, v, method="richardson")
      >>> round(float(d), 3)  # <3 x**2, v> = 3 - 12
      -9.0
    """
    if not callable(f):
        raise TypeError(f"f must be callable, got f={f!r}")
    check_method(method)
    with inputs.precision(x):
        x, rebuild = inputs.trainable("x", x)
        f = inputs.bind(f, rebuild)  # a function of the trained part
        v = inputs.float_params("v", inputs.trained_part(rebuild, v))
        if jax.tree.structure(v) != jax.tree.structure(x) or any(
            a.shape != b.shape
            for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(v), strict=True)
        ):
            raise ValueError(
                "v must have the structure and shapes of x, got "
                f"v={jax.tree.map(jnp.shape, v)} for x={jax.tree.map(jnp.shape, x)}"
            )
        step = check_step(step)
        out = _directional_derivative(
            static(f), x, v, step, method=method, return_error=return_error
        )
        _warn_if_not_finite(out[0] if return_error else out, f, x, method, step, along=True)
        return out


def _warn_if_not_finite(estimate, f, x, method, step, *, along=False):
    """A ``RuntimeWarning`` that says why when an eager call's estimate holds nan or inf.

    Under a trace (``jit``, ``vmap``, ``scan``) values are unknown and nothing is said.
    """
    leaves = jax.tree.leaves(estimate)
    if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves + jax.tree.leaves(x)):
        return
    bad = [np.flatnonzero(~np.isfinite(np.asarray(leaf))) for leaf in leaves]
    count = sum(b.size for b in bad)
    if not count:
        return
    f0 = float(f(x))
    x_leaves = jax.tree.leaves(x)
    if along:
        where, first = "the derivative along v", None
    else:
        k = next(i for i, b in enumerate(bad) if b.size)
        path = jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(estimate)[0][k][0])
        index = tuple(int(i) for i in np.unravel_index(bad[k][0], np.shape(leaves[k])))
        total = sum(np.size(leaf) for leaf in leaves)
        where = f"{count} of {total} entries (first: x{path} at index {index})"
        first = np.asarray(x_leaves[k])[index]
    if not np.isfinite(f0):
        why = f"f(x) = {f0} itself"
    else:
        if step is not None:
            size = f"step={step:g}"
        elif first is not None:
            size = f"default step {float(default_step(jnp.asarray(first), STEP_POWER[method])):.2g}"
        else:
            size = "the default step"
        why = (
            f"f(x) = {f0:.6g} is finite, but f is nan or inf at a point of the {method!r} stencil "
            f"({size}): x is closer than the step to an edge of f's domain (log or sqrt at 0) "
            "or f overflows there; pass a smaller step=, or method='forward' or 'backward' to "
            "step away from the edge"
        )
    warnings.warn(
        f"{'directional_derivative' if along else 'numerical_gradient'}: the {method!r} "
        f"estimate is not finite at {where}: {why}",
        RuntimeWarning,
        stacklevel=3,
    )


@functools.partial(jax.jit, static_argnames=("f", "method", "chunk_size", "return_error"))
def _numerical_gradient(f, x, step, *, method, chunk_size, return_error):
    leaves, treedef = jax.tree.flatten(x)
    h = flat_step(leaves, STEP_POWER[method], step)
    offsets = stencil(method, return_error)
    values = coordinate_values(f, x, h, offsets, chunk_size)
    delta = displacements(leaves, h, offsets, rounded=step is None)
    f0 = f(x) if method in ("forward", "backward") or return_error else None
    grad, error = estimate(method, values, f0, delta, return_error)
    grad = unflatten_like(leaves, treedef, grad)
    return (grad, unflatten_like(leaves, treedef, error)) if return_error else grad


@functools.partial(jax.jit, static_argnames=("f", "method", "return_error"))
def _directional_derivative(f, x, v, step, *, method, return_error):
    leaves, treedef = jax.tree.flatten(x)
    t = direction_step(leaves, jax.tree.leaves(v), STEP_POWER[method], step)
    offsets = stencil(method, return_error)
    values = direction_values(f, x, v, t, offsets)
    delta = nominal_displacements(offsets, t)
    f0 = f(x) if method in ("forward", "backward") or return_error else None
    value_leaves, out_treedef = jax.tree.flatten(values)
    f0_leaves = out_treedef.flatten_up_to(f0) if f0 is not None else [None] * len(value_leaves)
    pairs = [
        estimate(method, a, b, delta, return_error)
        for a, b in zip(value_leaves, f0_leaves, strict=True)
    ]
    derivative = out_treedef.unflatten([d for d, _ in pairs])
    if not return_error:
        return derivative
    return derivative, out_treedef.unflatten([e for _, e in pairs])


def coordinate_values(
    f: Callable, x: PyTree, h: jax.Array, offsets: Sequence[complex], chunk_size: int | None
) -> jax.Array:
    """``f(x + s_k h_i e_i)`` for every offset ``s_k`` and flat coordinate ``i``: shape (K, n).

    Coordinates are numbered through the leaves of ``x`` in flattening order. The ``n``
    coordinates are padded to whole chunks of ``chunk_size``; a padding index matches no leaf, so
    its evaluations are of ``f(x)`` and are dropped.
    """
    leaves, treedef = jax.tree.flatten(x)
    n = h.size
    chunk = min(chunk_size or default_chunk_size(n, len(offsets)), n)
    n_chunks = -(-n // chunk)
    s = jnp.asarray(offsets, dtype=_shift_dtype(h.dtype, offsets))
    starts = [int(k) for k in np.cumsum([0] + [leaf.size for leaf in leaves[:-1]])]

    def shifted(i, s_k):
        delta = s_k * h[jnp.minimum(i, n - 1)]
        moved = []
        for leaf, start in zip(leaves, starts, strict=True):
            flat = leaf.ravel()
            d = delta.astype(_shift_dtype(leaf.dtype, offsets))
            hit = jnp.arange(flat.size, dtype=jnp.int32) == i - start
            moved.append(jnp.where(hit, flat + d, flat).reshape(leaf.shape))
        return f(treedef.unflatten(moved))

    def batch(indices):
        return jax.vmap(lambda s_k: jax.vmap(lambda i: shifted(i, s_k))(indices))(s)

    indices = jnp.arange(n_chunks * chunk, dtype=jnp.int32).reshape(n_chunks, chunk)
    values = lax.map(batch, indices)
    return jnp.moveaxis(values, 1, 0).reshape(len(offsets), n_chunks * chunk)[:, :n]


def direction_values(
    f: Callable, x: PyTree, v: PyTree, t: jax.Array, offsets: Sequence[complex]
) -> PyTree:
    """``f(x + s_k t v)`` for every offset ``s_k``, stacked on a new leading axis of each leaf."""
    s = jnp.asarray(offsets, dtype=_shift_dtype(t.dtype, offsets))

    def shifted(s_k):
        def move(leaf, direction):
            d = (s_k * t).astype(_shift_dtype(leaf.dtype, offsets))
            return leaf + d * direction.astype(leaf.dtype)

        return f(jax.tree.map(move, x, v))

    return jax.vmap(shifted)(s)


def estimate(
    method: str,
    values: jax.Array,
    f0: jax.Array | None,
    delta: Sequence[jax.Array],
    with_error: bool,
    xp: Any = jnp,
) -> tuple[jax.Array, jax.Array | None]:
    """Combine stencil values into a derivative and, if asked, an estimate of its absolute error.

    ``values[k]`` is ``f`` at the point displaced by ``delta[k]`` (the imaginary displacement for
    the complex step), in the order of :func:`stencil`; ``f0`` is ``f(x)``, needed by the
    one-sided methods and by the error estimate. ``xp`` is the array namespace: ``jax.numpy``
    in traced code, ``numpy`` to combine fetched values on the host.
    """
    if method == "richardson":
        table = richardson_tableau(central_ladder(values, delta))
        derivative = table[-1][0]
        if not with_error:
            return derivative, None
        # The last correction bounds the truncation error; the tableau's weights c_k on the central
        # differences at h_k = h / 2**k amplify their rounding error eps |f| / h_k.
        truncation = xp.maximum(abs(derivative - table[-2][0]), abs(derivative - table[-2][1]))
        rounding = _rounding(values, f0, delta[0], xp) * _RICHARDSON_ROUNDING
        return derivative, truncation + rounding
    k = len(_STENCIL[method])
    derivative = _difference(method, values[:k], f0, delta[:k])
    if not with_error:
        return derivative, None
    p = _ORDER[method]
    half = _difference(method, values[k:], f0, delta[k:])
    truncation = abs(derivative - half) * 2**p / (2**p - 1)
    if method == "complex_step":  # no difference of nearby values, so no cancellation
        return derivative, truncation + xp.finfo(derivative.dtype).eps * abs(derivative)
    n_values = 2 if method == "central" else 1
    return derivative, truncation + n_values * _rounding(values, f0, delta[0], xp)


def central_ladder(values: jax.Array, delta: Sequence[jax.Array]) -> list[jax.Array]:
    """The central differences at ``h / 2**k``, ``k < RICHARDSON_LEVELS``, of the stencil."""
    return [
        (values[2 * k] - values[2 * k + 1]) / (delta[2 * k] - delta[2 * k + 1])
        for k in range(RICHARDSON_LEVELS)
    ]


def one_sided_slopes(
    values: jax.Array, f0: jax.Array, delta: Sequence[jax.Array]
) -> list[tuple[jax.Array, jax.Array]]:
    """Forward and backward differences ``(f(x + d) - f(x)) / d`` for each pair of points ``+-h``.

    For the stencils with such pairs (``"central"`` with its error estimate, ``"richardson"``),
    coarsest step first. At a kink the two slopes differ by the jump whatever ``h``; for a smooth
    ``f`` they differ by :math:`h f''`.
    """
    return [
        ((values[k] - f0) / delta[k], (values[k + 1] - f0) / delta[k + 1])
        for k in range(0, len(delta), 2)
    ]


def richardson_tableau(ladder: Sequence[Any]) -> list[list[Any]]:
    r"""Neville tableau of Richardson extrapolation for central differences at ``h / 2**k``.

    Column ``j`` removes the :math:`h^{2j}` term of the error expansion,
    :math:`T_{k, j} = T_{k+1, j-1} + (T_{k+1, j-1} - T_{k, j-1}) / (4^j - 1)`; the last column holds
    the single :math:`O(h^{2m})` estimate from ``m`` central differences.
    """
    table = [list(ladder)]
    for j in range(1, len(ladder)):
        prev = table[-1]
        table.append(
            [prev[k + 1] + (prev[k + 1] - prev[k]) / (4**j - 1) for k in range(len(prev) - 1)]
        )
    return table


# sum_k |c_k| 2**k, with c_k the weight of the central difference at h / 2**k in the extrapolation.
_RICHARDSON_ROUNDING = float(
    np.abs(richardson_tableau(list(np.eye(RICHARDSON_LEVELS)))[-1][0])
    @ 2.0 ** np.arange(RICHARDSON_LEVELS)
)


def _difference(method, values, f0, delta):
    if method == "central":
        return (values[0] - values[1]) / (delta[0] - delta[1])
    if method == "complex_step":
        return values[0].imag / delta[0]
    return (values[0] - f0) / delta[0]  # forward, or backward with delta[0] < 0


def _rounding(values, f0, h, xp):
    """Rounding error of one value of ``f`` divided by the step ``h``: ``4 eps |f| / |h|``.

    A value of ``f`` carries a few ulps of error from its own evaluation, hence the 4.
    """
    f_max = xp.maximum(abs(values).max(axis=0), abs(f0))
    return 4 * xp.finfo(values.dtype).eps * f_max / abs(h)


def stencil(method: str, with_error: bool) -> tuple[complex, ...]:
    """The offsets ``s_k`` of ``method``; ``with_error`` adds the half steps the estimate needs."""
    offsets = _STENCIL[method]
    if with_error and method != "richardson":
        return offsets + tuple(s / 2 for s in offsets)
    return offsets


def _shift_dtype(dtype, offsets):
    if any(isinstance(s, complex) for s in offsets):
        return jnp.result_type(dtype, jnp.complex64)
    return dtype


def default_step(x: jax.Array, power: float) -> jax.Array:
    """The default step ``eps**power * max(1, |x|)`` for each entry of ``x``."""
    eps = jnp.finfo(x.dtype).eps
    return (eps**power * jnp.maximum(1, jnp.abs(x))).astype(x.dtype)


def flat_step(leaves: Sequence[jax.Array], power: float, step: float | None) -> jax.Array:
    """The step ``h_i`` of every coordinate of ``leaves``, flattened, in their common dtype.

    ``step``, or the default ``eps**power * max(1, |x_i|)``. Each leaf's steps are computed in its
    own dtype, so a float32 leaf among float64 ones gets a float32-sized step that converts back
    to float32 exactly.
    """
    dtype = jnp.result_type(*leaves)
    if step is None:
        parts = [default_step(leaf, power).ravel().astype(dtype) for leaf in leaves]
    else:
        parts = [jnp.full(leaf.size, step, leaf.dtype).astype(dtype) for leaf in leaves]
    return jnp.concatenate(parts)


def displacements(
    leaves: Sequence[jax.Array], h: jax.Array, offsets: Sequence[complex], *, rounded: bool
) -> jax.Array:
    """The displacement of coordinate ``i`` at stencil point ``k``: shape (K, n).

    ``rounded=False``: the nominal ``s_k h_i``. ``rounded=True``: ``(x_i + s_k h_i) - x_i`` as
    rounded in the leaf's dtype, the step actually taken; dividing by it instead of the nominal
    step removes the error of representing ``x_i + h_i``. A complex step's displacement is its
    imaginary part, which is exact.
    """
    nominal = nominal_displacements(offsets, h)
    if not rounded or any(isinstance(s, complex) for s in offsets):
        return nominal
    cuts = np.cumsum([leaf.size for leaf in leaves[:-1]])
    columns = []
    for leaf, step in zip(leaves, jnp.split(nominal, cuts, axis=1), strict=True):
        flat = leaf.ravel()
        moved = flat + step.astype(leaf.dtype)
        columns.append(moved.astype(h.dtype) - flat.astype(h.dtype))
    return jnp.concatenate(columns, axis=1)


def nominal_displacements(offsets: Sequence[complex], h: jax.Array) -> jax.Array:
    """``s_k h`` for each offset (the imaginary part of a complex one), stacked on a new axis 0."""
    return jnp.stack([(s.imag if isinstance(s, complex) else s) * h for s in offsets])


def direction_step(
    leaves: Sequence[jax.Array], directions: Sequence[jax.Array], power: float, step: float | None
) -> jax.Array:
    """The step ``t`` along ``v``: ``step``, or ``eps**power min_i max(1, |x_i|) / |v_i|``.

    The default moves no coordinate further than its own default step ``eps**power max(1,
    |x_i|)``, so coordinates of different scales are all resolved; ``eps`` is that of the least
    precise leaf, whose coordinates must still move.
    """
    dtype = jnp.result_type(*leaves)
    if step is not None:
        return jnp.asarray(step, dtype)
    eps = max(jnp.finfo(leaf.dtype).eps for leaf in leaves)

    def room(x, v):  # the largest t that moves no coordinate of x further than max(1, |x_i|)
        return jnp.min(jnp.where(v != 0, jnp.maximum(1, jnp.abs(x)) / jnp.abs(v), jnp.inf))

    pairs = zip(leaves, directions, strict=True)
    t = jnp.min(jnp.stack([room(x, v).astype(dtype) for x, v in pairs]))
    return (eps**power * jnp.where(jnp.isfinite(t), t, 1)).astype(dtype)


def default_chunk_size(n: int, k: int) -> int:
    """Coordinates per vmapped batch: ``k`` evaluations each over ``n`` input elements.

    At least 8, so that for large ``n`` the per-step overhead of the sequential loop over chunks
    stays small beside the batch's work.
    """
    return min(n, max(8, _TARGET_CHUNK_ELEMENTS // (k * n)))


def unflatten_like(leaves: Sequence[jax.Array], treedef, flat: jax.Array) -> PyTree:
    """Split a flat vector into the shapes and dtypes of ``leaves`` and rebuild the pytree."""
    cuts = np.cumsum([leaf.size for leaf in leaves[:-1]])
    parts = jnp.split(flat, cuts)
    return treedef.unflatten(
        [p.reshape(leaf.shape).astype(leaf.dtype) for p, leaf in zip(parts, leaves, strict=True)]
    )


def static(f: Callable) -> Callable:
    """``f``, fit to be a static argument of :func:`jax.jit`, which hashes it.

    An unhashable callable (a bound method of an object holding arrays, say) is wrapped in a
    callable hashed by its identity, so calling with the same object again reuses the compilation.
    """
    try:
        hash(f)
    except TypeError:
        return _ByIdentity(f)
    return f


class _ByIdentity:
    __slots__ = ("f",)

    def __init__(self, f):
        self.f = f

    def __call__(self, *args):
        return self.f(*args)

    def __hash__(self):
        return id(self.f)

    def __eq__(self, other):
        return isinstance(other, _ByIdentity) and other.f is self.f


def check_method(method: str) -> None:
    """``ValueError`` unless ``method`` is one of :data:`METHODS`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method=}")


def check_step(step: float | None) -> float | None:
    """``step`` as a float, or an error unless it is ``None`` or a positive finite number."""
    if step is None:
        return None
    if isinstance(step, bool) or not isinstance(step, numbers.Real):
        raise TypeError(f"step must be a positive real number or None, got {step=}")
    if not np.isfinite(step) or step <= 0:
        raise ValueError(f"step must be positive and finite, got {step=}")
    return float(step)
