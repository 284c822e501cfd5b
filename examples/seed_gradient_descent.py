"""The seed's example: gradient descent on ``function_2(x) = x0^2 + x1^2`` from ``(-3, 4)``.

The study notes gdjax grew from compute the gradient by central differences (``h = 1e-4``) and
take 100 steps with ``lr = 0.1``; they print ``[-6.11110793e-10  8.14814391e-10]``. gdjax
reproduces it in float64, with the seed's finite differences and with ``jax.grad``, then shows the
notes' warning: a learning rate too large blows up, one too small barely moves.

Run: ``python examples/seed_gradient_descent.py``
"""

import numpy as np

from gdjax.descent import gradient_descent
from gdjax.functions import function_2

SEED_OUTPUT = np.array([-6.11110793e-10, 8.14814391e-10])


def main() -> None:
    init_x = np.array([-3.0, 4.0])  # float64, so gdjax runs this in float64
    for grad in ("numerical", "autodiff"):
        x = gradient_descent(function_2, init_x, lr=0.1, step_num=100, grad=grad)
        print(f"grad={grad:9s}  x = {np.array2string(x, precision=8)}  ({x.dtype})")
        np.testing.assert_allclose(x, SEED_OUTPUT, rtol=1e-8)
    print("matches the seed's output", SEED_OUTPUT)

    # Each step multiplies x by (1 - 2 lr): lr = 10 gives |1 - 20| = 19 per step; lr = 1e-10
    # leaves x where it started.
    for lr in (10.0, 1e-10):
        x = gradient_descent(function_2, init_x, lr=lr, step_num=100)
        print(f"lr={lr:g}: x = {np.array2string(x, precision=6)}")


if __name__ == "__main__":
    main()
