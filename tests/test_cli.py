"""The installed ``gdjax`` console script, driven in subprocesses as a user would run it."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gdjax import results

SCRIPT = shutil.which("gdjax", path=os.path.dirname(sys.executable))
COMMAND = [SCRIPT] if SCRIPT else [sys.executable, "-m", "gdjax.cli"]


def gdjax(*args, cwd=None, env=None, timeout=120):
    """Run ``gdjax ARGS`` and return the completed process (text output)."""
    return subprocess.run([*COMMAND, *map(str, args)], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def gdjax_all(commands, cwd=None):
    """Run several ``gdjax`` command lines at once (each pays JAX's start-up) and wait for all."""
    procs = [subprocess.Popen([*COMMAND, *map(str, c)], cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in commands]
    return [(*p.communicate(timeout=120), p.returncode) for p in procs]


def is_png(path):
    data = Path(path).read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


USER_MODULE = textwrap.dedent('''
    import jax
    import jax.numpy as jnp

    def bowl(x):
        """A correct function: its gradient is whatever jax.grad says."""
        return jnp.sum((x - 1.0) ** 2) + jnp.sum(jnp.sin(x))

    @jax.custom_vjp
    def cube_sum(x):
        return jnp.sum(x ** 3)

    def _fwd(x):
        return cube_sum(x), x

    def _bwd(x, g):
        return (g * 2.0 * x ** 2,)  # wrong: d/dx x^3 = 3 x^2

    cube_sum.defvjp(_fwd, _bwd)

    def not_scalar(x):
        return x * 2.0
''')


@pytest.fixture
def user_module(tmp_path):
    (tmp_path / "usermod.py").write_text(USER_MODULE)
    return tmp_path


def test_script_is_installed():
    assert SCRIPT is not None, "pip install -e . should have put the gdjax script beside python"


def test_help_explains_every_option():
    top = gdjax("--help")
    assert top.returncode == 0
    for command in ("demo", "sweep", "check", "race"):
        assert command in top.stdout
    sweep = gdjax("sweep", "--help")
    assert sweep.returncode == 0
    for option in ("--optimizer", "--lr", "--starts", "--seeds", "--steps", "--out", "--json",
                   "examples:", "1e-4:1e-1:64"):
        assert option in sweep.stdout


def test_sweep_prints_the_table_and_best_and_writes_files(tmp_path):
    out = tmp_path / "sw"
    proc = gdjax("sweep", "himmelblau", "--optimizer", "sgd", "--lr", "1e-3:1e-1:3",
                 "--starts", "6", "--seeds", "2", "--steps", "200", "--top", "4", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "36 configs" in proc.stdout and "best: config" in proc.stdout
    res = results.load(out / "sweep.csv")
    assert len(res) == 36
    np.testing.assert_allclose(np.unique(res.grid["learning_rate"]), [1e-3, 1e-2, 1e-1])
    assert sorted(np.unique(res.grid["seed"])) == [0, 1]
    for name in ("sweep_loss_curves.png", "sweep_final_loss.png", "sweep_basins.png"):
        assert is_png(out / name)


def test_sweep_of_a_user_function_as_json(user_module):
    proc = gdjax("sweep", "usermod:bowl", "--dim", "3", "--optimizer", "adam", "--lr",
                 "0.001,0.03", "--steps", "500", "--hp", "b1=0.8", "--json", "--no-plots",
                 "--out", "o", cwd=user_module)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["configs"] == 2
    assert summary["best"]["config"] == {"learning_rate": 0.03}
    # minimiser of sum((x-1)^2 + sin x): 2 (x - 1) + cos x = 0
    x = np.asarray(summary["best"]["params"])
    np.testing.assert_allclose(2 * (x - 1) + np.cos(x), 0, atol=1e-3)
    assert not list((user_module / "o").glob("*.png"))


def test_check_exit_status_tells_right_from_wrong(user_module, tmp_path):
    np.save(tmp_path / "x.npy", np.array([[0.5, -1.0], [2.0, 0.1]], np.float32))
    (right, _, right_rc), (wrong, _, wrong_rc), (as_json, _, json_rc) = gdjax_all([
        ("check", "usermod:bowl", "--shape", "6"),
        ("check", "usermod:cube_sum", "--shape", "3,2", "--dtype", "float32", "--seed", "1"),
        ("check", "usermod:bowl", "--point", tmp_path / "x.npy", "--json"),
    ], cwd=user_module)
    assert right_rc == 0 and "gradient OK" in right
    assert wrong_rc == 1 and "gradient check FAILED: wrong gradient" in wrong
    assert json_rc == 0
    doc = json.loads(as_json)
    assert doc["ok"] is True and doc["shape"] == [2, 2] and doc["dtype"] == "float32"


def test_race_draws_the_optimisers(tmp_path):
    proc = gdjax("race", "beale", "--optimizers", "sgd,adam", "--lr", "0.01", "--steps", "300",
                 "--out", tmp_path, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [r["optimizer"] for r in doc["results"]] == ["sgd", "adam"]
    assert all(r["learning_rate"] == 0.01 for r in doc["results"])
    assert is_png(tmp_path / "race.png")


BAD_USAGE = [
    ((), "required"),
    (("sweep", "--lr", "0:1:3"), "LO:HI:N"),
    (("sweep", "nosuch"), "unknown function 'nosuch'"),
    (("sweep", "rosenbrock", "--hp", "momentum=0.9"), "momentum"),
    (("check", "usermod:bowl"), "--shape"),
    (("check", "nosuchmodule:f", "--shape", "3"), "cannot import module 'nosuchmodule'"),
    (("check", "usermod:not_scalar", "--shape", "3"), "scalar"),
    (("race", "--optimizers", "sgd,bogus"), "bogus"),
]


@pytest.fixture(scope="module")
def bad_usage(tmp_path_factory):
    """The outcome of every bad command line, all run at once."""
    cwd = tmp_path_factory.mktemp("bad")
    (cwd / "usermod.py").write_text(USER_MODULE)
    return gdjax_all([args for args, _ in BAD_USAGE], cwd=cwd)


@pytest.mark.parametrize("index", range(len(BAD_USAGE)), ids=[
    " ".join(args) or "no-command" for args, _ in BAD_USAGE])
def test_bad_usage_is_one_line_and_exit_2(bad_usage, index):
    args, expected = BAD_USAGE[index]
    stdout, stderr, rc = bad_usage[index]
    assert rc == 2, (args, stdout, stderr)
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], stderr
    assert expected in lines[0]
    assert stdout == ""


@pytest.fixture(scope="module", autouse=True)
def demo(tmp_path_factory):
    """``gdjax demo --json``, started before this module's first test so that its ~15 s overlap
    the other tests; ``demo.result()`` waits for it."""
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = subprocess.Popen([*COMMAND, "demo", "--out", str(out), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    class Demo:
        folder = out

        @staticmethod
        def result():
            stdout, stderr = proc.communicate(timeout=120)
            return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    yield Demo
    if proc.poll() is None:
        proc.kill()


def test_demo_reproduces_the_seed_and_writes_its_files(demo):
    out = demo.folder
    proc = demo.result()
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert [r["gradient"] for r in summary["seed"]] == ["numerical", "autodiff"]
    assert all(r["matches_seed"] for r in summary["seed"])
    assert summary["seed"][0]["x"] == "[-6.11110793e-10  8.14814391e-10]"
    race = {r["optimizer"]: r for r in summary["race"]}
    assert list(race) == ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"]
    assert race["adam"]["loss"] < 1e-6 and race["momentum"]["loss"] < 1e-6
    assert summary["lr_sweep"]["counts"]["diverged"] > 0  # the grid crosses 2/L = 1
    assert summary["lr_sweep"]["best"]["config"]["learning_rate"] < 1.0
    assert len(summary["gradient_checks"]) >= 10
    assert all(r["ok"] for r in summary["gradient_checks"])
    assert summary["seconds"] > 0  # timed and reported (speed is measured in benchmarks/)
    for name in ("race_rosenbrock.png", "lr_sweep_loss_curves.png", "lr_sweep_final_loss.png"):
        assert is_png(out / name)
    for name in ("race.csv", "lr_sweep.csv", "lr_sweep.json", "gradient_checks.csv",
                 "summary.json"):
        assert (out / name).stat().st_size > 0
    assert len(results.load(out / "lr_sweep.json")) == 48 * 16
