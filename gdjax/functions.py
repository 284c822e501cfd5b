"""Standard optimisation test functions with their known minimisers.

Each function is a :class:`TestFunction`: a frozen record that is called like the pure ``jnp``
function it wraps and carries the metadata a test or a sweep needs (minimisers, minimum value, a
suggested start, a plotting/sampling box).

* Coordinates live on the last axis: ``f(x)`` with ``x.shape == (n,)`` returns a scalar, and a
  batch ``x.shape == (..., n)`` returns shape ``(...)`` (handy for contour plots); ``jax.vmap``,
  ``jax.jit`` and ``jax.grad`` work as usual.
* The dtype follows ``x`` (float32 or float64; integer input is promoted to the default float).
  Every function is built from polynomials, ``cos``, ``exp`` and ``sqrt``, so complex input works
  too (the complex-step derivative of ``gdjax.numerical_gradient``), away from Ackley's minimiser.
* Metadata are float64 NumPy arrays, exact whatever ``jax_enable_x64`` says.
  :data:`rosenbrock`, :data:`sphere`, :data:`rastrigin`, :data:`ackley` and
  :data:`styblinski_tang` are defined in any dimension (``dim is None``); their metadata are given
  for ``n = 2`` and :meth:`TestFunction.in_dim` gives them for another ``n``.

Example:
    >>> from gdjax import functions
    >>> f = functions.get("rosenbrock")
    >>> round(float(f(f.start)), 4)  # 100 (1 - 1.44)^2 + 2.2^2
    24.2
    >>> f.minimizers
    array([[1., 1.]])
    >>> f.in_dim(4).minimizers
    array([[1., 1., 1., 1.]])

References:
    M. Jamil and X.-S. Yang, "A literature survey of benchmark functions for global optimization
    problems", Int. J. Math. Model. Numer. Optim. 4(2), 2013. https://arxiv.org/abs/1308.4008

    S. Surjanovic and D. Bingham, "Virtual Library of Simulation Experiments: Test Functions and
    Datasets". https://www.sfu.ca/~ssurjano/optimization.html
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ALL",
    "TestFunction",
    "ackley",
    "beale",
    "booth",
    "function_2",
    "get",
    "goldstein_price",
    "himmelblau",
    "matyas",
    "monkey_saddle",
    "rastrigin",
    "rosenbrock",
    "saddle",
    "sphere",
    "styblinski_tang",
    "three_hump_camel",
]


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class TestFunction:
    """A test function ``f(x) -> scalar`` and what is known about it.

    Instances compare and hash by identity, so one can be a static argument of ``jax.jit``.

    Attributes:
        name: registry name (``functions.get(name)``).
        fn: the pure ``jnp`` function of ``x`` (coordinates on the last axis).
        dim: the dimension the function is defined in, or ``None`` when it is defined for any
            ``n`` (the array metadata below are then for ``n = 2``; see :meth:`in_dim`).
        minimum: the global minimum value; ``-inf`` when the function is unbounded below.
        minimizers: all global minimisers, shape ``(k, n)``; ``k = 0`` when there is none.
        start: a suggested starting point, shape ``(n,)``.
        domain: a box ``((lo, hi),) * n`` for plots and for sampling starting points.
        stationary_points: known stationary points that are not minimisers (saddles), shape
            ``(m, n)``; empty unless the point of the function is such a point.
    """

    __test__ = False  # not a pytest test class, despite its name

    name: str
    fn: Callable[[jax.Array], jax.Array]
    dim: int | None
    minimum: float
    minimizers: np.ndarray
    start: np.ndarray
    domain: tuple[tuple[float, float], ...]
    stationary_points: np.ndarray
    _in_dim: Callable[[int], TestFunction] | None = None

    def __post_init__(self):
        # help() and IPython's `?` on an instance then show the formula.
        object.__setattr__(self, "__doc__", self.fn.__doc__)

    def __call__(self, x: jax.typing.ArrayLike) -> jax.Array:
        """Evaluates the function at ``x`` of shape ``(n,)`` (or ``(..., n)``).

        Raises:
            ValueError: if ``x`` is a scalar, or its last axis is not ``dim`` long.
        """
        x = jnp.asarray(x)
        if x.ndim == 0:
            raise ValueError(f"{self.name}: x must have a coordinate axis, got a scalar x={x}")
        if self.dim is not None and x.shape[-1] != self.dim:
            raise ValueError(
                f"{self.name} is defined in {self.dim} dimensions, got x with shape {x.shape}"
            )
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            x = x.astype(jnp.result_type(x, 1.0))
        return self.fn(x)

    def in_dim(self, n: int) -> TestFunction:
        """The same function with its metadata for dimension ``n``.

        Raises:
            ValueError: if the function has a fixed dimension other than ``n``, or ``n`` is below
                the smallest dimension it is defined in.
        """
        if self._in_dim is None:
            if n != self.dim:
                raise ValueError(f"{self.name} is defined in {self.dim} dimensions only, got n={n}")
            return self
        return self._in_dim(n)

    def __repr__(self) -> str:
        n = self.start.shape[0]
        return f"TestFunction({self.name!r}, dim={self.dim}, n={n}, minimum={self.minimum})"


def _points(rows, n: int = 2) -> np.ndarray:
    a = np.array(rows, dtype=np.float64).reshape(-1, n)
    a.setflags(write=False)
    return a


def _fixed(name, fn, *, minimum, minimizers, start, box, stationary_points=()):
    return TestFunction(
        name=name,
        fn=fn,
        dim=2,
        minimum=float(minimum),
        minimizers=_points(minimizers),
        start=_points(start)[0],
        domain=(box, box),
        stationary_points=_points(stationary_points),
    )


def _any_dim(name, fn, *, minimizer, minimum_per_coordinate, start, box, min_n=1):
    """A function of any ``n`` whose only minimiser is ``minimizer * ones(n)``.

    ``start`` is a pattern tiled over the coordinates, as in the extended Rosenbrock start
    ``(-1.2, 1, -1.2, 1, ...)``.
    """

    @functools.cache
    def in_dim(n: int) -> TestFunction:
        if n < min_n:
            raise ValueError(f"{name} is defined for n >= {min_n}, got n={n}")
        return TestFunction(
            name=name,
            fn=fn,
            dim=None,
            minimum=float(minimum_per_coordinate * n),
            minimizers=_points(np.full(n, minimizer), n),
            start=_points(np.resize(np.asarray(start, dtype=np.float64), n), n)[0],
            domain=(box,) * n,
            stationary_points=_points((), n),
            _in_dim=in_dim,
        )

    return in_dim(2)


# --------------------------------------------------------------------------------------------
# Functions of any dimension.


def _sphere(x):
    r"""Sphere function (De Jong's F1), the seed's ``function_2`` in any dimension.

    .. math:: f(x) = \sum_{i=1}^{n} x_i^2

    Minimum 0 at ``x = 0``. Suggested start ``(-3, 4)``, the seed's.
    """
    return jnp.sum(x**2, axis=-1)


def _rosenbrock(x):
    r"""Rosenbrock's valley, extended to ``n >= 2`` dimensions.

    .. math:: f(x) = \sum_{i=1}^{n-1} \left[100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2\right]

    Minimum 0 at ``x = (1, ..., 1)``; the classic start is ``(-1.2, 1)``, tiled in ``n``
    dimensions. (For ``4 <= n <= 7`` the extended function also has a local minimiser near
    ``(-1, 1, ..., 1)``.)

    References:
        H. H. Rosenbrock, "An automatic method for finding the greatest or least value of a
        function", The Computer Journal 3(3), 1960.
    """
    x_i, x_next = x[..., :-1], x[..., 1:]
    return jnp.sum(100.0 * (x_next - x_i**2) ** 2 + (1.0 - x_i) ** 2, axis=-1)


def _rastrigin(x):
    r"""Rastrigin function: a bowl covered in a regular grid of local minima.

    .. math:: f(x) = 10 n + \sum_{i=1}^{n} \left[x_i^2 - 10 \cos(2 \pi x_i)\right]

    Minimum 0 at ``x = 0``; local minima near every integer point. Domain ``[-5.12, 5.12]^n``.
    """
    n = x.shape[-1]
    return 10.0 * n + jnp.sum(x**2 - 10.0 * jnp.cos(2.0 * jnp.pi * x), axis=-1)


def _ackley(x):
    r"""Ackley function: a nearly flat outer region around a deep, narrow hole.

    .. math::

        f(x) = -20 \exp\Big(-0.2 \sqrt{\tfrac{1}{n} \textstyle\sum_i x_i^2}\Big)
               - \exp\Big(\tfrac{1}{n} \textstyle\sum_i \cos(2 \pi x_i)\Big) + 20 + e

    Minimum 0 at ``x = 0``. The function is **not differentiable at its minimiser**: the square
    root meets 0 there (a cone tip), so ``jax.grad`` returns NaN at ``x = 0`` and gradient norms
    stay near 4 / sqrt(n) however close one gets. Domain ``[-32.768, 32.768]^n``.

    References:
        D. H. Ackley, "A connectionist machine for genetic hillclimbing", Kluwer, 1987.
    """
    mean_sq = jnp.mean(x**2, axis=-1)
    mean_cos = jnp.mean(jnp.cos(2.0 * jnp.pi * x), axis=-1)
    return -20.0 * jnp.exp(-0.2 * jnp.sqrt(mean_sq)) - jnp.exp(mean_cos) + 20.0 + math.e


# The minimiser of Styblinski-Tang in one coordinate is the negative root of
# d/dt (t^4 - 16 t^2 + 5 t) = 4 t^3 - 32 t + 5 = 0. Newton's method in 50-digit decimal arithmetic
# (Python's `decimal` module) gives t* = -2.9035340277711770951..., with
# (t*^4 - 16 t*^2 + 5 t*) / 2 = -39.166165703771415463... The float64 values below are those
# numbers correctly rounded (-39.16616570377142, often quoted, is one ulp off).
_STYBLINSKI_TANG_T = -2.903534027771177
_STYBLINSKI_TANG_MIN = -39.16616570377141


def _styblinski_tang(x):
    r"""Styblinski-Tang function: separable, with :math:`2^n` local minima.

    .. math:: f(x) = \frac{1}{2} \sum_{i=1}^{n} \left(x_i^4 - 16 x_i^2 + 5 x_i\right)

    Minimum :math:`-39.16616570377141\, n` at :math:`x_i = -2.903534027771177` for every ``i``.
    Domain ``[-5, 5]^n``. The value is negative near the minimum, so a relative measure such as
    Keskar's sharpness (which divides by ``1 + f``) does not apply to it.
    """
    return 0.5 * jnp.sum(x**4 - 16.0 * x**2 + 5.0 * x, axis=-1)


sphere = _any_dim(
    "sphere", _sphere, minimizer=0.0, minimum_per_coordinate=0.0, start=(-3.0, 4.0),
    box=(-5.0, 5.0),
)
rosenbrock = _any_dim(
    "rosenbrock", _rosenbrock, minimizer=1.0, minimum_per_coordinate=0.0, start=(-1.2, 1.0),
    box=(-2.048, 2.048), min_n=2,
)
rastrigin = _any_dim(
    "rastrigin", _rastrigin, minimizer=0.0, minimum_per_coordinate=0.0, start=(3.5, -2.5),
    box=(-5.12, 5.12),
)
ackley = _any_dim(
    "ackley", _ackley, minimizer=0.0, minimum_per_coordinate=0.0, start=(3.5, -2.5),
    box=(-32.768, 32.768),
)
styblinski_tang = _any_dim(
    "styblinski_tang", _styblinski_tang, minimizer=_STYBLINSKI_TANG_T,
    minimum_per_coordinate=_STYBLINSKI_TANG_MIN, start=(0.0, 0.0), box=(-5.0, 5.0),
)

#: The seed's ``function_2(x) = x[0]**2 + x[1]**2``: :data:`sphere` in two dimensions.
function_2 = dataclasses.replace(sphere, name="function_2", dim=2, _in_dim=None)


# --------------------------------------------------------------------------------------------
# Two-dimensional functions.


def _beale(x):
    r"""Beale function: flat valleys meeting in a sharp corner.

    .. math::

        f(x, y) = (1.5 - x + x y)^2 + (2.25 - x + x y^2)^2 + (2.625 - x + x y^3)^2

    Minimum 0 at ``(3, 0.5)``. Start ``(1, 1)`` (More, Garbow and Hillstrom 1981).
    Domain ``[-4.5, 4.5]^2``.
    """
    x0, x1 = x[..., 0], x[..., 1]
    return (
        (1.5 - x0 + x0 * x1) ** 2
        + (2.25 - x0 + x0 * x1**2) ** 2
        + (2.625 - x0 + x0 * x1**3) ** 2
    )


def _booth(x):
    r"""Booth function: a convex quadratic.

    .. math:: f(x, y) = (x + 2 y - 7)^2 + (2 x + y - 5)^2

    Minimum 0 at ``(1, 3)``. Domain ``[-10, 10]^2``.
    """
    x0, x1 = x[..., 0], x[..., 1]
    return (x0 + 2.0 * x1 - 7.0) ** 2 + (2.0 * x0 + x1 - 5.0) ** 2


def _matyas(x):
    r"""Matyas function: a convex quadratic with a long, flat valley along ``x = y``.

    .. math:: f(x, y) = 0.26 (x^2 + y^2) - 0.48 x y

    Minimum 0 at ``(0, 0)``; the Hessian's eigenvalues are 0.04 and 1.48. Domain ``[-10, 10]^2``.
    """
    x0, x1 = x[..., 0], x[..., 1]
    return 0.26 * (x0**2 + x1**2) - 0.48 * x0 * x1


# Himmelblau's minimisers other than (3, 2) are irrational. They were computed by Newton's method
# on the gradient in 50-digit decimal arithmetic (Python's `decimal` module; 60 steps from the
# rounded textbook values, |grad f| < 1e-45) and rounded to float64; f is below 1e-30 at each.
_HIMMELBLAU_MINIMIZERS = (
    (3.0, 2.0),
    (-2.805118086952745, 3.131312518250573),
    (-3.779310253377747, -3.2831859912861696),
    (3.5844283403304917, -1.8481265269644036),
)


def _himmelblau(x):
    r"""Himmelblau function: four global minima of equal value.

    .. math:: f(x, y) = (x^2 + y - 11)^2 + (x + y^2 - 7)^2

    Minimum 0 at ``(3, 2)``, ``(-2.805118..., 3.131312...)``, ``(-3.779310..., -3.283185...)``
    and ``(3.584428..., -1.848126...)``; a local maximum near ``(-0.2708, -0.9230)``.
    Domain ``[-5, 5]^2``.

    References:
        D. M. Himmelblau, "Applied Nonlinear Programming", McGraw-Hill, 1972.
    """
    x0, x1 = x[..., 0], x[..., 1]
    return (x0**2 + x1 - 11.0) ** 2 + (x0 + x1**2 - 7.0) ** 2


def _three_hump_camel(x):
    r"""Three-hump camel function: a global minimum between two local ones.

    .. math:: f(x, y) = 2 x^2 - 1.05 x^4 + \frac{x^6}{6} + x y + y^2

    Minimum 0 at ``(0, 0)``; local minima near ``(+-1.7476, -+0.8738)``. Domain ``[-5, 5]^2``.
    """
    x0, x1 = x[..., 0], x[..., 1]
    return 2.0 * x0**2 - 1.05 * x0**4 + x0**6 / 6.0 + x0 * x1 + x1**2


def _goldstein_price(x):
    r"""Goldstein-Price function: steep walls, several local minima, minimum value 3.

    .. math::

        f(x, y) = \left[1 + (x + y + 1)^2 (19 - 14 x + 3 x^2 - 14 y + 6 x y + 3 y^2)\right]
                  \left[30 + (2 x - 3 y)^2 (18 - 32 x + 12 x^2 + 48 y - 36 x y + 27 y^2)\right]

    Minimum 3 at ``(0, -1)``. Domain ``[-2, 2]^2``.

    References:
        A. A. Goldstein and J. F. Price, "On descent from local minima", Mathematics of
        Computation 25(115), 1971.
    """
    x0, x1 = x[..., 0], x[..., 1]
    a = 1.0 + (x0 + x1 + 1.0) ** 2 * (
        19.0 - 14.0 * x0 + 3.0 * x0**2 - 14.0 * x1 + 6.0 * x0 * x1 + 3.0 * x1**2
    )
    b = 30.0 + (2.0 * x0 - 3.0 * x1) ** 2 * (
        18.0 - 32.0 * x0 + 12.0 * x0**2 + 48.0 * x1 - 36.0 * x0 * x1 + 27.0 * x1**2
    )
    return a * b


def _saddle(x):
    r"""The saddle :math:`f(x, y) = x^2 - y^2`: stationary at the origin, no minimum.

    The origin is the only stationary point (Hessian ``diag(2, -2)``); the function is unbounded
    below, so ``minimizers`` is empty and ``minimum`` is ``-inf``. The suggested start
    ``(1, 0.01)`` lies just off the saddle's attracting axis ``y = 0``: gradient descent first
    heads for the saddle, then escapes along ``y``.
    """
    x0, x1 = x[..., 0], x[..., 1]
    return x0**2 - x1**2


def _monkey_saddle(x):
    r"""The monkey saddle :math:`f(x, y) = x^3 - 3 x y^2`: a degenerate stationary point.

    The origin is the only stationary point and the Hessian vanishes there, so second-order tests
    say nothing about it; the function is unbounded below (``minimizers`` empty, ``minimum``
    ``-inf``).
    """
    x0, x1 = x[..., 0], x[..., 1]
    return x0**3 - 3.0 * x0 * x1**2


beale = _fixed(
    "beale", _beale, minimum=0.0, minimizers=(3.0, 0.5), start=(1.0, 1.0), box=(-4.5, 4.5)
)
booth = _fixed(
    "booth", _booth, minimum=0.0, minimizers=(1.0, 3.0), start=(-5.0, -5.0), box=(-10.0, 10.0)
)
matyas = _fixed(
    "matyas", _matyas, minimum=0.0, minimizers=(0.0, 0.0), start=(-8.0, 6.0), box=(-10.0, 10.0)
)
himmelblau = _fixed(
    "himmelblau", _himmelblau, minimum=0.0, minimizers=_HIMMELBLAU_MINIMIZERS, start=(0.0, 0.0),
    box=(-5.0, 5.0),
)
three_hump_camel = _fixed(
    "three_hump_camel", _three_hump_camel, minimum=0.0, minimizers=(0.0, 0.0),
    start=(-1.0, 1.5), box=(-5.0, 5.0),
)
goldstein_price = _fixed(
    "goldstein_price", _goldstein_price, minimum=3.0, minimizers=(0.0, -1.0), start=(-0.5, 0.5),
    box=(-2.0, 2.0),
)
saddle = _fixed(
    "saddle", _saddle, minimum=-math.inf, minimizers=(), start=(1.0, 0.01), box=(-2.0, 2.0),
    stationary_points=(0.0, 0.0),
)
monkey_saddle = _fixed(
    "monkey_saddle", _monkey_saddle, minimum=-math.inf, minimizers=(), start=(1.0, 0.01),
    box=(-2.0, 2.0), stationary_points=(0.0, 0.0),
)

#: Every test function by name, read-only.
ALL: Mapping[str, TestFunction] = MappingProxyType({
    f.name: f
    for f in (
        sphere, function_2, rosenbrock, beale, booth, matyas, himmelblau, rastrigin, ackley,
        styblinski_tang, three_hump_camel, goldstein_price, saddle, monkey_saddle,
    )
})


def get(name: str) -> TestFunction:
    """The test function called ``name``.

    Raises:
        ValueError: if no function has that name; the message lists the known names.

    Example:
        >>> from gdjax import functions
        >>> functions.get("himmelblau").minimizers.shape
        (4, 2)
    """
    try:
        return ALL[name]
    except KeyError:
        raise ValueError(
            f"unknown test function name={name!r}; known: {', '.join(sorted(ALL))}"
        ) from None
