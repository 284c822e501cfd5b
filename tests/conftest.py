"""Test-wide settings: Hypothesis runs derandomised (the same examples on every run, so CI is
reproducible); ``HYPOTHESIS_PROFILE=explore`` draws fresh random examples for a bug hunt."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
