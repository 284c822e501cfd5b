"""Curvature and sharpness of a minimiser: Hessian-vector products, the top Hessian eigenvalue,
Keskar et al.'s epsilon-sharpness and 1-D interpolation plots.

Large-batch training tends to end in *sharp* minimisers, small-batch training in *flat* ones, and
flat ones generalise better (Keskar et al. 2017). This module measures that: the curvature at
``x`` (:func:`hessian_top_eigenvalue`, :func:`hutchinson_trace`), the rise of ``f`` in a small box
around ``x`` (:func:`epsilon_sharpness`, Keskar's metric 2.1), and ``f`` along the line through
two solutions (:func:`interpolate`, Keskar's Figure 3).

Every function takes a scalar ``f`` of a pytree ``x``, never forms the Hessian, and is a pure
function of its array arguments: ``jax.jit`` it, or ``jax.vmap`` it over a batch of points (one
per sweep configuration) and get one result per point. It computes in the dtype of ``x`` and
returns results in it: float64 ``x`` (a NumPy array too) runs inside a local
``jax.enable_x64(True)``, whatever the global flag.

``x`` may hold leaves that are not trained (an ``equinox`` module passed as it is): only its
inexact arrays (floating or complex dtype; Python floats too) are the coordinates of the
Hessian; every other leaf (an activation function, ``None``, Python ints and bools, integer
arrays) is passed to ``f`` unchanged. A result "like ``x``" (an eigenvector, a Hessian-vector
product, a perturbation) has ``None`` in place of those leaves, as ``equinox.filter_grad``
returns a gradient; a direction ``v`` or second point ``x_b`` may be given in full or so.

References:
    N. S. Keskar, D. Mudigere, J. Nocedal, M. Smelyanskiy and P. T. P. Tang, "On Large-Batch
    Training for Deep Learning: Generalization Gap and Sharp Minima", ICLR 2017.
    https://arxiv.org/abs/1609.04836
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from gdjax import inputs

__all__ = [
    "EigenResult",
    "SharpnessResult",
    "TraceEstimate",
    "epsilon_sharpness",
    "hessian_top_eigenvalue",
    "hutchinson_trace",
    "hvp",
    "interpolate",
]

PyTree = Any


class EigenResult(NamedTuple):
    r"""An eigenpair estimate of the Hessian ``H`` of ``f`` at ``x``.

    Attributes:
        eigenvalue: the estimate :math:`\lambda` of the largest (algebraic) eigenvalue.
        vector: the unit eigenvector estimate :math:`v`, a pytree like ``x``.
        residual: :math:`\|H v - \lambda v\|_2`; small when ``v`` is a true eigenvector.
        iterations: int32, the number of Hessian-vector products spent.
        converged: whether the tolerance was met within the iteration cap.
    """

    eigenvalue: jax.Array
    vector: PyTree
    residual: jax.Array
    iterations: jax.Array
    converged: jax.Array


class SharpnessResult(NamedTuple):
    r"""Keskar et al.'s epsilon-sharpness of ``f`` at ``x``.

    Attributes:
        sharpness: :math:`\phi_{x,f}(\epsilon, A)`, in percent.
        max_value: the largest value of ``f`` found in the box, :math:`f(x + A y^*)`.
        value: :math:`f(x)`.
        perturbation: the maximising step :math:`A y^*`, a pytree like ``x``.
    """

    sharpness: jax.Array
    max_value: jax.Array
    value: jax.Array
    perturbation: PyTree


class TraceEstimate(NamedTuple):
    r"""Hutchinson's estimate of the Hessian trace.

    Attributes:
        trace: the sample mean of :math:`v^\top H v`.
        stderr: its standard error (sample standard deviation over :math:`\sqrt{m}`).
    """

    trace: jax.Array
    stderr: jax.Array


def _jit_on_f(*static_argnums: int) -> Callable[[Callable], Callable]:
    """Compiles ``impl(f, *args)`` as one program, with ``f`` and the given arguments static.

    One compilation is far cheaper than running the loops eagerly, op by op; under an outer
    ``jit`` or ``vmap`` the inner ``jit`` is inlined. An unhashable ``f`` runs uncompiled.
    """

    def wrap(impl: Callable) -> Callable:
        jitted = jax.jit(impl, static_argnums=(0, *static_argnums))

        @functools.wraps(impl)
        def call(f, *args):
            try:
                hash(f)
            except TypeError:
                return impl(f, *args)
            return jitted(f, *args)

        return call

    return wrap


def hvp(f: Callable[[PyTree], jax.Array], x: PyTree, v: PyTree) -> PyTree:
    r"""Hessian-vector product :math:`\nabla^2 f(x)\, v`, without forming the Hessian.

    Forward-over-reverse: the directional derivative (``jax.jvp``) of the gradient
    (``jax.grad``) along ``v``,

    .. math:: \nabla^2 f(x)\, v = \frac{d}{dt} \nabla f(x + t v) \Big|_{t=0},

    at the cost of about two gradient evaluations and the memory of one.

    Args:
        f: scalar function of a pytree of floating arrays.
        x: the point, a pytree (leaves other than floating arrays are carried unchanged, see the
            module docstring).
        v: the direction, a pytree with the structure and shapes of ``x``.

    Returns:
        :math:`H v`, a pytree like ``x``.

    Raises:
        TypeError: if ``x`` holds no floating-point array or ``f`` does not return a
            real scalar.
        ValueError: if ``x`` and ``v`` differ in structure or shapes, or ``f(x)`` is not scalar.

    Example:
        >>> import jax.numpy as jnp
        >>> from gdjax.sharpness import hvp
        >>> hvp(lambda x: x[0] ** 2 * x[1], jnp.array([1.0, 2.0]), jnp.array([1.0, 0.0]))
        Array([4., 2.], dtype=float32)
    """
    with inputs.precision(x):
        f, x, rebuild = _point(f, x)
        v = inputs.float_params("v", inputs.trained_part(rebuild, v))
        _check_same_shapes("v", v, "x", x)
        return _hvp(f, x, jax.tree.map(lambda a, b: b.astype(a.dtype), x, v))


@_jit_on_f()
def _hvp(f, x, v):
    return jax.jvp(jax.grad(f), (x,), (v,))[1]


def hessian_top_eigenvalue(
    f: Callable[[PyTree], jax.Array],
    x: PyTree,
    *,
    num_iters: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
) -> EigenResult:
    r"""Largest eigenvalue of the Hessian of ``f`` at ``x``, by shifted power iteration.

    Power iteration :math:`v_{k+1} = H v_k / \|H v_k\|` with the Rayleigh quotient
    :math:`\lambda_k = v_k^\top H v_k` converges to the eigenvalue of largest *magnitude*, which
    is the largest eigenvalue only when that one is positive and dominant. Away from minima (at a
    saddle, or where a negative eigenvalue dominates) it is not, so this runs two phases:

    1. power iteration on :math:`H`, giving :math:`\rho = \|H v\| \approx \max_i |\lambda_i|`;
    2. power iteration on :math:`H + \rho I`, whose eigenvalues :math:`\lambda_i + \rho \ge 0`
       are largest at :math:`\lambda_{\max}`; then :math:`\lambda_{\max} = \nu - \rho`.

    Phase 2 starts from phase 1's vector when its Rayleigh quotient is positive (at a minimum it
    has then already converged, and phase 2 takes two products) and from the random start
    otherwise. Each phase stops when :math:`|\lambda_k - \lambda_{k-1}| \le
    \mathrm{tol}\, |\lambda_k|`. That bounds the last change, not the error: with :math:`r` the
    ratio of the two largest eigenvalues of the operator iterated, the error is about
    :math:`\mathrm{tol}\, r^2 / (1 - r^2)` relative, and larger when eigenvalues cluster. The
    residual :math:`\|H v - \lambda v\|` converges only as the square root of the eigenvalue
    error, but it is a guarantee: some eigenvalue of :math:`H` lies within it of
    :math:`\lambda` (Bauer-Fike). The loops are ``lax.while_loop``: under ``jax.vmap`` every point
    runs until the slowest has converged, and those done are left unchanged.

    Args:
        f: scalar function of a pytree of floating arrays.
        x: the point, a pytree (leaves other than floating arrays are carried unchanged, see the
            module docstring).
        num_iters: cap on the iterations of each phase (at most ``2 * num_iters`` products).
        tol: relative change of the eigenvalue estimate at which a phase stops.
        seed: seed of the random unit start vector.

    Returns:
        An :class:`EigenResult`; check ``converged`` and ``residual``.

    Raises:
        TypeError: if ``x`` holds no floating-point array or ``f`` does not return a
            real scalar.
        ValueError: if ``num_iters < 1`` or ``tol <= 0``, or ``f(x)`` is not scalar.

    Example:
        >>> import jax.numpy as jnp
        >>> from gdjax.sharpness import hessian_top_eigenvalue
        >>> f = lambda x: 2.0 * x[0] ** 2 - 3.0 * x[1] ** 2  # H = diag(4, -6)
        >>> round(float(hessian_top_eigenvalue(f, jnp.zeros(2)).eigenvalue), 4)
        4.0

    References:
        G. H. Golub and C. F. Van Loan, "Matrix Computations", 4th ed., section 8.2.1 (the power
        method), Johns Hopkins, 2013.
    """
    num_iters = inputs.positive_int("num_iters", num_iters)
    _check_positive("tol", tol)
    _check_seed(seed)
    with inputs.precision(x):
        f, x, _ = _point(f, x)
        return _top_eigenvalue(f, x, num_iters, tol, seed)


@_jit_on_f()
def _top_eigenvalue(f, x, num_iters, tol, seed):
    x_flat, unravel = ravel_pytree(x)
    _, hvp_flat = jax.linearize(jax.grad(lambda z: f(unravel(z))), x_flat)

    v0 = jax.random.normal(jax.random.key(seed), x_flat.shape, x_flat.dtype)
    v0 = v0 / jnp.linalg.norm(v0)
    mu, v1, w1, iters1, _ = _power_iteration(hvp_flat, v0, num_iters, tol)
    rho = jnp.linalg.norm(w1)
    start = jnp.where(mu > 0, v1, v0)
    nu, v, w, iters2, converged = _power_iteration(
        lambda u: hvp_flat(u) + rho * u, start, num_iters, tol
    )
    return EigenResult(
        eigenvalue=nu - rho,
        vector=unravel(v),
        residual=jnp.linalg.norm(w - nu * v),
        iterations=iters1 + iters2,
        converged=converged,
    )


def _power_iteration(matvec, v, num_iters, tol):
    """Power iteration from the unit vector ``v``: ``(lam, v, matvec(v), products, converged)``."""
    w = matvec(v)
    lam = jnp.vdot(v, w)

    def done(lam, lam_prev):
        return jnp.abs(lam - lam_prev) <= tol * jnp.abs(lam)

    def cond(state):
        k, _, _, lam, lam_prev = state
        return (k < num_iters) & ~done(lam, lam_prev)

    def body(state):
        k, v, w, lam, _ = state
        norm = jnp.linalg.norm(w)
        v = jnp.where(norm > 0, w / norm, v)  # H v = 0: v is an eigenvector already
        w = matvec(v)
        return k + 1, v, w, jnp.vdot(v, w), lam

    state = (jnp.int32(1), v, w, lam, jnp.full_like(lam, jnp.inf))
    k, v, w, lam, lam_prev = lax.while_loop(cond, body, state)
    return lam, v, w, k, done(lam, lam_prev)


def hutchinson_trace(
    f: Callable[[PyTree], jax.Array], x: PyTree, num_samples: int = 100, *, seed: int = 0
) -> TraceEstimate:
    r"""Hutchinson's stochastic estimate of the Hessian trace.

    .. math::

        \operatorname{tr} H = \mathbb{E}_v\, [v^\top H v]
        \approx \frac{1}{m} \sum_{j=1}^{m} v_j^\top H v_j,
        \qquad v_j \in \{-1, +1\}^n \text{ (Rademacher)}.

    Each sample costs one Hessian-vector product; samples run in chunks of 16 (``lax.map``), so
    memory stays that of 16 products. The estimate is exact for a diagonal Hessian; otherwise its
    variance is :math:`2 \sum_{i \ne j} H_{ij}^2 / m`.

    Args:
        f: scalar function of a pytree of floating arrays.
        x: the point, a pytree (leaves other than floating arrays are carried unchanged, see the
            module docstring).
        num_samples: the number of probe vectors :math:`m`.
        seed: seed of the probe vectors.

    Returns:
        A :class:`TraceEstimate` with the estimate and its standard error.

    Raises:
        TypeError: if ``x`` holds no floating-point array or ``f`` does not return a
            real scalar.
        ValueError: if ``num_samples < 1`` or ``f(x)`` is not scalar.

    Example:
        >>> import jax.numpy as jnp
        >>> from gdjax.sharpness import hutchinson_trace
        >>> float(hutchinson_trace(lambda x: jnp.sum(x**2), jnp.ones(3)).trace)
        6.0

    References:
        M. F. Hutchinson, "A stochastic estimator of the trace of the influence matrix for
        Laplacian smoothing splines", Communications in Statistics - Simulation and Computation
        19(2), 1990.
    """
    num_samples = inputs.positive_int("num_samples", num_samples)
    _check_seed(seed)
    with inputs.precision(x):
        f, x, _ = _point(f, x)
        return _trace(f, x, num_samples, seed)


@_jit_on_f(2)
def _trace(f, x, num_samples, seed):
    x_flat, unravel = ravel_pytree(x)
    _, hvp_flat = jax.linearize(jax.grad(lambda z: f(unravel(z))), x_flat)

    def quadratic_form(key):
        v = jax.random.rademacher(key, x_flat.shape, x_flat.dtype)
        return jnp.vdot(v, hvp_flat(v))

    keys = jax.random.split(jax.random.key(seed), num_samples)
    samples = lax.map(quadratic_form, keys, batch_size=min(num_samples, 16))
    stderr = jnp.std(samples, ddof=1) / jnp.sqrt(num_samples) if num_samples > 1 else jnp.nan
    return TraceEstimate(trace=jnp.mean(samples), stderr=jnp.asarray(stderr, samples.dtype))


def epsilon_sharpness(
    f: Callable[[PyTree], jax.Array],
    x: PyTree,
    epsilon: float = 1e-3,
    *,
    subspace_dim: int | None = None,
    subspace: jax.typing.ArrayLike | None = None,
    ascent_steps: int = 20,
    num_starts: int = 1,
    seed: int = 0,
) -> SharpnessResult:
    r"""Keskar et al.'s epsilon-sharpness: the largest relative rise of ``f`` in a box around ``x``.

    .. math::

        \phi_{x,f}(\epsilon, A) = 100 \cdot
            \frac{\max_{y \in C_\epsilon} f(x + A y) - f(x)}{1 + f(x)},
        \qquad
        C_\epsilon = \{ z \in \mathbb{R}^p :
            |z_i| \le \epsilon\, (|(A^+ x)_i| + 1) \}

    (metric 2.1 of the paper), with :math:`A^+` the pseudo-inverse of :math:`A`, ``x`` flattened
    to a vector of length ``n`` with ``jax.flatten_util.ravel_pytree``. By default
    :math:`A = I_n` and the box is :math:`|z_i| \le \epsilon (|x_i| + 1)` in the full parameter
    space; ``subspace_dim=p`` draws :math:`A` as an :math:`n \times p` matrix of independent
    standard normal entries (the paper's random manifold, with ``p = 100``), and ``subspace``
    gives :math:`A` explicitly. The formula divides by :math:`1 + f(x)`: it is meant for a
    nonnegative loss.

    The inner problem maximises what is, near a minimiser, a convex quadratic over a box: NP-hard
    in general, so every method (the paper's 10 iterations of L-BFGS-B included) finds a local
    maximum, and ``max_value`` is a lower bound of the true maximum. Here each ascent works in
    box units :math:`u = y / b` (:math:`b` the half-widths of :math:`C_\epsilon`) and takes
    ``ascent_steps`` projected, normalised gradient steps

    .. math::

        u \leftarrow \mathrm{clip}(u + g / \|g\|_\infty,\, -1,\, 1),
        \qquad g = \nabla_u f(x + A (b \odot u)),

    evaluating at each step also the box corner :math:`\mathrm{sign}(g)` that the linearisation
    points to (where a convex function is at least as large as at :math:`u`). The first ascent
    starts at :math:`u_0 \sim 10^{-3} N(0, I)`, next to ``x`` (at ``x`` itself the gradient of a
    minimiser vanishes): from there the gradient steps amplify the sharpest directions, as power
    iteration does. Further starts (``num_starts > 1``, vmapped) are uniform in the box. The
    result is the best of ``x`` itself and every point evaluated.

    At a minimiser the rise :math:`f(x + Ay) - f(x)` is of order :math:`\epsilon^2`, while float32
    resolves ``f`` only to about :math:`10^{-7} |f(x)|`: for small ``epsilon`` at a flat minimum,
    evaluate in float64 (pass a float64 ``x``, a NumPy array will do).

    Args:
        f: scalar function of a pytree of floating arrays (a loss, ``f >= 0``).
        x: the point, a pytree (leaves other than floating arrays are carried unchanged, see the
            module docstring).
        epsilon: relative size of the box (the paper uses ``1e-3`` and ``5e-4``); may be traced.
        subspace_dim: the number ``p`` of random directions, or ``None``.
        subspace: an explicit ``(n, p)`` matrix :math:`A`, or ``None``; not with ``subspace_dim``.
        ascent_steps: steps of each ascent; each costs one gradient and one value of ``f``.
        num_starts: independent ascents; the best is kept.
        seed: seed of the random :math:`A` and of the starts.

    Returns:
        A :class:`SharpnessResult`.

    Raises:
        TypeError: if ``x`` holds no floating-point array or ``f`` does not return a
            real scalar.
        ValueError: if ``epsilon <= 0``; ``subspace_dim`` is not in ``[1, n]``; ``subspace`` is
            not an ``(n, p)`` matrix or comes with ``subspace_dim``; ``ascent_steps`` or
            ``num_starts`` is below 1; or ``f(x)`` is not scalar.

    Example:
        >>> import jax.numpy as jnp
        >>> from gdjax.sharpness import epsilon_sharpness
        >>> f = lambda x: 0.5 * jnp.sum(jnp.array([4.0, 1.0]) * x**2)  # H = diag(4, 1)
        >>> r = epsilon_sharpness(f, jnp.zeros(2), 0.1)  # max at a corner: 0.5 * 0.01 * (4 + 1)
        >>> round(float(r.max_value), 6), round(float(r.sharpness), 4)
        (0.025, 2.5)

    References:
        N. S. Keskar et al., "On Large-Batch Training for Deep Learning: Generalization Gap and
        Sharp Minima", ICLR 2017, section 2.2.1. https://arxiv.org/abs/1609.04836
    """
    _check_positive("epsilon", epsilon)
    ascent_steps = inputs.positive_int("ascent_steps", ascent_steps)
    num_starts = inputs.positive_int("num_starts", num_starts)
    _check_seed(seed)
    with inputs.precision(x):
        f, x, _ = _point(f, x)
        n = sum(leaf.size for leaf in jax.tree.leaves(x))
        subspace_dim, subspace = _check_subspace(subspace_dim, subspace, n)
        return _sharpness(f, x, epsilon, subspace_dim, subspace, ascent_steps, num_starts, seed)


@_jit_on_f(3, 5, 6)
def _sharpness(f, x, epsilon, subspace_dim, subspace, ascent_steps, num_starts, seed):
    x_flat, unravel = ravel_pytree(x)
    key_a, key_near, key_box = jax.random.split(jax.random.key(seed), 3)
    if subspace_dim is not None:
        a = jax.random.normal(key_a, (x_flat.size, subspace_dim), x_flat.dtype)
    else:
        a = None if subspace is None else subspace.astype(x_flat.dtype)
    coords = x_flat if a is None else jnp.linalg.pinv(a) @ x_flat  # A^+ x
    b = epsilon * (jnp.abs(coords) + 1.0)  # half-widths of C_epsilon

    def step_of(u):  # A y, y = b * u
        return b * u if a is None else a @ (b * u)

    def h(u):
        return f(unravel(x_flat + step_of(u)))

    value = f(x)
    u0 = jax.random.uniform(key_box, (num_starts, b.size), x_flat.dtype, -1.0, 1.0)
    u0 = u0.at[0].set(1e-3 * jax.random.normal(key_near, b.shape, x_flat.dtype))
    u_best, h_best = jax.vmap(lambda u: _box_ascent(h, u, value, ascent_steps))(u0)
    best = jnp.argmax(h_best)
    max_value = h_best[best]
    return SharpnessResult(
        sharpness=100.0 * (max_value - value) / (1.0 + value),
        max_value=max_value,
        value=value,
        perturbation=unravel(step_of(u_best[best])),
    )


def _check_subspace(subspace_dim, subspace, n):
    """``(p, None)`` for a random A, ``(None, A)`` for a given one, ``(None, None)`` for I."""
    if subspace is not None:
        if subspace_dim is not None:
            raise ValueError(
                f"give subspace_dim or subspace, not both, got subspace_dim={subspace_dim} "
                f"and subspace with shape {jnp.shape(subspace)}"
            )
        a = inputs.float_params("subspace", subspace)
        if not isinstance(a, jax.Array) or a.ndim != 2 or a.shape[0] != n:
            raise ValueError(
                f"subspace must be an (n, p) matrix with n={n} parameters, got subspace with "
                f"shape {jax.tree.map(jnp.shape, a)}"
            )
        return None, a
    if subspace_dim is None:
        return None, None
    p = inputs.positive_int("subspace_dim", subspace_dim)
    if p > n:
        raise ValueError(
            f"subspace_dim must be at most the number of parameters n={n}, "
            f"got subspace_dim={subspace_dim}"
        )
    return p, None


def _box_ascent(h, u, h_zero, steps):
    """Best ``(u, h(u))`` over ``u = 0`` (where ``h = h_zero``) and an ascent of h from ``u``.

    Each step evaluates the iterate and the corner ``sign(grad)``, then moves to the next iterate.
    """

    def keep_best(best, u, h_u):
        u_best, h_best = best
        better = h_u > h_best  # False for NaN: a NaN is never the maximum
        return jnp.where(better, u, u_best), jnp.where(better, h_u, h_best)

    def step(carry, _):
        u, best = carry
        h_u, g = jax.value_and_grad(h)(u)
        corner = jnp.sign(g)
        best = keep_best(keep_best(best, u, h_u), corner, h(corner))
        scale = jnp.max(jnp.abs(g))
        u = jnp.clip(u + g / jnp.where(scale > 0, scale, 1.0), -1.0, 1.0)
        return (u, best), None

    best = (jnp.zeros_like(u), h_zero)
    (u, best), _ = lax.scan(step, (u, best), None, length=steps)
    return keep_best(best, u, h(u))


def _check_seed(seed: Any) -> None:
    """``TypeError`` unless ``seed`` is an integer (a Python or NumPy int, or an integer array
    of shape ``()``, traced or not)."""
    if isinstance(seed, bool):
        raise TypeError(f"seed must be an integer, got seed={seed!r}")
    if isinstance(seed, int | np.integer):
        return
    dtype = getattr(seed, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jnp.integer) and np.ndim(seed) == 0:
        return
    raise TypeError(f"seed must be an integer, got seed={seed!r} of type {type(seed).__name__}")


def interpolate(
    f: Callable[[PyTree], jax.Array],
    x_a: PyTree,
    x_b: PyTree,
    alphas: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Values of ``f`` on the line through two points (Keskar et al.'s Figure 3).

    .. math:: \big(f(\alpha x_b + (1 - \alpha) x_a)\big)_{\alpha \in \text{alphas}}

    ``alpha = 0`` is ``x_a`` (in the paper the small-batch solution), ``alpha = 1`` is ``x_b``
    (the large-batch one); the points are evaluated with ``jax.vmap``.

    Args:
        f: scalar function of a pytree of floating arrays.
        x_a: the point at ``alpha = 0`` (its non-array leaves carried unchanged).
        x_b: the point at ``alpha = 1``, with the structure and shapes of ``x_a`` (in full, its
            static leaves ignored, or with ``None`` in their place).
        alphas: 1-D array of line coordinates; by default ``jnp.linspace(-1, 2, 61)``, the
            paper's range.

    Returns:
        ``f`` at each alpha, shape ``alphas.shape``.

    Raises:
        TypeError: if ``x_a`` holds no floating-point array, ``x_b`` a non-floating one
            where ``x_a`` has a trained one, or ``f`` does not return a real scalar.
        ValueError: if ``x_a`` and ``x_b`` differ in structure or shapes, or ``alphas`` is not 1-D.

    Example:
        >>> import jax.numpy as jnp
        >>> from gdjax.sharpness import interpolate
        >>> alphas = jnp.array([0.0, 0.5, 2.0])
        >>> interpolate(lambda x: jnp.sum(x**2), jnp.zeros(2), jnp.ones(2), alphas)
        Array([0. , 0.5, 8. ], dtype=float32)

    References:
        I. J. Goodfellow, O. Vinyals and A. M. Saxe, "Qualitatively characterizing neural
        network optimization problems", ICLR 2015. https://arxiv.org/abs/1412.6544
    """
    with inputs.precision(x_a):
        f, x_a, rebuild = _point(f, x_a, "x_a")
        x_b = inputs.float_params("x_b", inputs.trained_part(rebuild, x_b))
        _check_same_shapes("x_b", x_b, "x_a", x_a)
        if alphas is not None and not isinstance(alphas, jax.core.Tracer):
            kind = np.asarray(alphas).dtype.kind
            if kind not in "fiu":
                raise TypeError(f"alphas must be real numbers, got alphas={alphas!r}")
        alphas = jnp.linspace(-1.0, 2.0, 61) if alphas is None else jnp.asarray(alphas)
        if alphas.ndim != 1:
            raise ValueError(f"alphas must be a 1-D array, got alphas with shape {alphas.shape}")
        return _interpolate(f, x_a, x_b, alphas)


@_jit_on_f()
def _interpolate(f, x_a, x_b, alphas):
    flat_a, unravel = ravel_pytree(x_a)
    flat_b, _ = ravel_pytree(x_b)
    alphas = alphas.astype(flat_a.dtype)
    return jax.vmap(lambda t: f(unravel(t * flat_b + (1 - t) * flat_a)))(alphas)


def _point(f: Callable, x: PyTree, name: str = "x") -> tuple[Callable, PyTree, Any]:
    """``(g, train, rebuild)``: ``x``'s trained part (:func:`gdjax.inputs.trainable`), ``g`` the
    function of it that calls ``f`` on the full tree, after checking that ``f(x)`` is a real
    scalar."""
    train, rebuild = inputs.trainable(name, x)
    f = inputs.bind(f, rebuild)
    inputs.scalar_function("f", f, train)
    return f, train, rebuild


def _check_same_shapes(name: str, tree: PyTree, ref_name: str, ref: PyTree) -> None:
    def shapes(t):
        return [jnp.shape(leaf) for leaf in jax.tree.leaves(t)]

    if jax.tree.structure(tree) != jax.tree.structure(ref) or shapes(tree) != shapes(ref):
        raise ValueError(
            f"{name} must have the structure and shapes of {ref_name}, got {name} with "
            f"{jax.tree.structure(tree)} and shapes {shapes(tree)} for {ref_name} with "
            f"{jax.tree.structure(ref)} and shapes {shapes(ref)}"
        )


def _check_positive(name: str, value: Any) -> None:
    """``ValueError`` unless ``value`` is a positive real; a traced value is left unchecked."""
    if isinstance(value, jax.core.Tracer):
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real | jax.Array):
        raise TypeError(f"{name} must be a positive real number, got {name}={value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {name}={value!r}")
