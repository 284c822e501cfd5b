"""Test-wide settings: Hypothesis runs derandomised (the same examples on every run, so CI is
reproducible); ``HYPOTHESIS_PROFILE=explore`` draws fresh random examples for a bug hunt."""

import os

from hypothesis import settings

# The tests compile far more than they run (a few ms of arithmetic per program): LLVM's cheaper
# passes make XLA:CPU compile 12-16% faster (tests/test_descent.py with test_state_rng.py: 62 s
# -> 52-56 s). The programs' HLO (fusion, layouts, what is computed) is unchanged; only machine
# code is less optimised. Set before JAX starts, for this process and the subprocesses it runs
# (examples, the demo); benchmarks and users keep XLA's defaults.
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# Rough cost of each test file in CPU seconds on a CI core (compiling dominates; the examples,
# the demo and the distributed and memory tests run subprocesses). pyproject runs xdist with
# ``--dist loadfile --no-loadscope-reorder``: each file goes to one worker, in the order below,
# longest first, so that the last files to start are short ones and no worker idles at the end.
# Files not listed cost little and keep their places after these. Only the order depends on
# these numbers, never what runs. (Not --dist loadgroup: with pytest 9 and pytest-xdist 3.8 an
# xdist_group mark is silently ignored, as xdist renames item._nodeid, which pytest 9 no longer
# reads, so a group's tests still spread over the workers.)
FILE_COST = {
    "test_examples.py": 90, "test_functional.py": 55, "test_cli.py": 45, "test_descent.py": 40,
    "test_state_rng.py": 35, "test_sweep.py": 35, "test_model_libraries.py": 35,
    "test_distributed.py": 30, "test_engine.py": 25, "test_batch_study.py": 22,
    "test_fidelity.py": 22, "test_sharpness.py": 16, "test_fit.py": 15,
    "test_conventions.py": 14, "test_checkpoint.py": 13, "test_finite_diff.py": 13,
    "test_memory.py": 10, "test_functions.py": 10, "test_static_leaves.py": 9,
    "test_check.py": 8, "test_model_results.py": 8,
}


def pytest_collection_modifyitems(items):
    # a stable sort: a file's tests stay together and in their order
    items.sort(key=lambda item: -FILE_COST.get(item.path.name, 0))
