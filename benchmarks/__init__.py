"""Side-by-side benchmarks of gdjax against its peers (``python -m benchmarks``)."""
