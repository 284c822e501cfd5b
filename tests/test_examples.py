"""Every script in ``examples/`` runs to completion with its fast settings and writes its pictures.

The scripts run two at a time in the background (each pays JAX's start-up and compiles on one
core most of the time, so pairs nearly halve the wall time on two cores); each test waits for its
own script.
"""

import concurrent.futures
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))
# rough CPU seconds in fast mode (measured), to start the longest first; the rest cost 3-6
COST = {"keskar_study.py": 18, "equinox_mlp.py": 18, "digits_batch_size.py": 15,
        "optimizer_race.py": 10}
PICTURES = {
    "optimizer_race.py": ["optimizer_race.png"],
    "lr_sweep_quadratic.py": ["lr_sweep_quadratic.png", "lr_sweep_loss_curves.png"],
    "basin_map.py": ["basin_map.png"],
    "digits_batch_size.py": ["digits_batch_size.png"],
}


def run_example(name, out):
    """Run one example with its fast settings, its pictures going to ``out``."""
    env = {**os.environ, "GDJAX_EXAMPLES_FAST": "1", "GDJAX_EXAMPLES_OUT": str(out)}
    if name.startswith("test_"):  # a pytest file: run it as pytest would
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   str(EXAMPLES / name)]
    else:
        command = [sys.executable, str(EXAMPLES / name)]
    return subprocess.run(command, cwd=out, env=env, capture_output=True, text=True,
                          timeout=240)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs[name]``: a future of ``(completed process, output folder)``, two at a time."""
    root = tmp_path_factory.mktemp("examples")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {}
        for name in sorted(SCRIPTS, key=lambda n: -COST.get(n, 1)):  # longest first
            out = root / name.removesuffix(".py")
            out.mkdir()
            futures[name] = pool.submit(lambda n=name, o=out: (run_example(n, o), o))
        yield futures
        for future in futures.values():
            future.cancel()


def test_every_example_is_covered():
    assert {"seed_gradient_descent.py", "test_custom_vjp_example.py", *PICTURES} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_runs(runs, name):
    proc, out = runs[name].result()
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    for picture in PICTURES.get(name, []):
        data = (out / picture).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, picture


def test_seed_example_prints_the_seeds_numbers(runs):
    proc, _ = runs["seed_gradient_descent.py"].result()
    assert proc.stdout.count("[-6.11110793e-10  8.14814391e-10]") >= 2


def test_custom_vjp_example_catches_the_wrong_rules(runs):
    proc, _ = runs["test_custom_vjp_example.py"].result()
    assert "6 passed" in proc.stdout, proc.stdout
