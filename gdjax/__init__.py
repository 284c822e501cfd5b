"""gdjax: gradient descent you can verify and sweep, on JAX.

Pure functions on ``jax.grad`` and ``jit`` compute gradients; a hand-written finite-difference path
cross-checks them (:func:`numerical_gradient`, :func:`check_grads`); optax transforms are composed
into optimisers (:func:`optimizer`); one scanned loop runs them (:func:`minimize`, :func:`fit`,
:func:`gradient_descent`); and ``vmap`` of that loop runs many learning rates, hyperparameters,
starting points and seeds as one compiled program (:func:`sweep`).

The submodule ``gdjax.sweep`` is shadowed by the function of the same name; import its other
names with ``from gdjax.sweep import ...``.
"""

from gdjax import engine, functions
from gdjax.batching import fit
from gdjax.check import GradCheckReport, assert_grads_close, check_grads
from gdjax.descent import gradient_descent, minimize
from gdjax.engine import History, Result, Status
from gdjax.finite_diff import directional_derivative, numerical_gradient
from gdjax.optimizers import OPTIMIZERS, hyperparameters, optimizer
from gdjax.race import Race, race
from gdjax.results import StatusArray, SweepResult, load
from gdjax.sharpness import (
    epsilon_sharpness,
    hessian_top_eigenvalue,
    hutchinson_trace,
    hvp,
    interpolate,
)
from gdjax.sweep import LogUniform, Uniform, starts_grid, sweep
from gdjax.sweep.checkpoint import CheckpointError, CheckpointWarning

__version__ = "0.1.0"

__all__ = [
    "OPTIMIZERS",
    "Race",
    "CheckpointError",
    "CheckpointWarning",
    "GradCheckReport",
    "History",
    "LogUniform",
    "Result",
    "Status",
    "StatusArray",
    "SweepResult",
    "Uniform",
    "__version__",
    "assert_grads_close",
    "check_grads",
    "directional_derivative",
    "engine",
    "epsilon_sharpness",
    "fit",
    "functions",
    "gradient_descent",
    "hessian_top_eigenvalue",
    "hutchinson_trace",
    "hvp",
    "hyperparameters",
    "interpolate",
    "load",
    "minimize",
    "numerical_gradient",
    "optimizer",
    "race",
    "starts_grid",
    "sweep",
]
