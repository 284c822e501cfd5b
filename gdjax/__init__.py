"""gdjax: gradient descent you can verify and sweep, on JAX."""

__version__ = "0.1.0"

__all__ = ["__version__"]
