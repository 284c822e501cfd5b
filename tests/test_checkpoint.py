"""Checkpoints that cannot lie: every change to a sweep is refused, damaged files are recomputed.

Each sweep here is tiny (40 configs in chunks of 16: three chunks, a few steps) and shares its
compiled program with the others wherever the objective and optimiser are the same objects.
"""

import importlib
import json
import os
import shutil
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import regression_problem
from regression_problem import linear_loss

from gdjax.sweep import sweep
from gdjax.sweep.checkpoint import CheckpointError, CheckpointWarning

runner = importlib.import_module("gdjax.sweep.runner")  # gdjax.sweep is the function


def _closure(c):
    return lambda x: c * jnp.sum(x**2)


LRS = np.geomspace(1e-3, 0.6, 40)
BASE = dict(f=_closure(2.0), x0=np.float32([1.0]), optimizer="sgd",
            grid={"learning_rate": LRS}, steps=8, chunk_size=16, progress=False)
CHUNKS = ["g0-c0.npz", "g0-c1.npz", "g0-c2.npz"]


def run(directory=None, **changes):
    kw = {**BASE, **changes}
    return sweep(kw.pop("f"), kw.pop("x0"), kw.pop("optimizer"), checkpoint=directory, **kw)


def assert_same(a, b):
    for field in ("params", "loss", "best_loss", "grad_norm", "status", "steps", "diverged_at"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    np.testing.assert_array_equal(a.history.loss, b.history.loss)


@pytest.fixture(scope="module")
def whole():
    """The base sweep, uninterrupted and without a checkpoint."""
    return run()


@pytest.fixture
def chunk_calls(monkeypatch):
    """Counts the chunks computed; ``calls["stop_at"] = n`` interrupts the n-th one."""
    calls = {"n": 0, "stop_at": None}
    run_chunk = runner.run_chunk

    def counted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["stop_at"]:
            calls["stop_at"] = None
            raise KeyboardInterrupt  # the sweep is stopped (Ctrl-C, a killed job)
        return run_chunk(*args, **kwargs)

    monkeypatch.setattr(runner, "run_chunk", counted)
    return calls


def _objective(power):
    """A function named ``objective`` in this module, its code differing with ``power``."""
    namespace = {"jnp": jnp, "__name__": __name__}
    exec(f"def objective(x):\n    return jnp.sum(x ** {power})", namespace)  # noqa: S102
    return namespace["objective"]


def _keyed(key):
    return lambda x: jnp.sum(x**2) + 0.0 * jax.random.normal(key)


def _fit(**changes):
    (X, y), params = regression_problem.regression()
    kw = dict(f=linear_loss, x0=params, data=(X, y), batch_size=16, epochs=1,
              grid={"learning_rate": LRS[:20]})
    return {**kw, **changes}


# a schedule inside an inject_hyperparams transformation
SCHEDULED = dict(optimizer="momentum", grid={"momentum": LRS / 2},
                 learning_rate=optax.linear_schedule(0.1, 0.01, 10))

# before -> after: every pair is another sweep, refused and named by the part that differs
CHANGES = {
    "optax.sgd(1e-3) then optax.sgd(3e-3)": (
        dict(optimizer=optax.sgd(1e-3), grid={"x0": np.float32(LRS[:, None])}),
        dict(optimizer=optax.sgd(3e-3), grid={"x0": np.float32(LRS[:, None])}), "optimizer"),
    "a schedule's constant": (
        SCHEDULED, {**SCHEDULED, "learning_rate": optax.linear_schedule(0.1, 0.01, 20)},
        "optimizer"),
    "a function of the same name": (
        dict(f=_objective(2)), dict(f=_objective(4)), "objective"),
    "another lambda": (
        dict(f=lambda x: jnp.sum(x**2)), dict(f=lambda x: jnp.sum(x**2) + 1.0), "objective"),
    "a random key in a closure": (
        dict(f=_keyed(jax.random.key(0))), dict(f=_keyed(jax.random.key(1))), "objective"),
    "another eval_fn": (dict(eval_fn=lambda p: {"max": jnp.max(p)}),
                        dict(eval_fn=lambda p: {"max": jnp.min(p)}), "eval_fn"),
    "a fixed hyperparameter": (
        dict(optimizer="momentum", momentum=0.5), dict(optimizer="momentum", momentum=0.6),
        "hyper"),
    "tol": (dict(tol=1e-6), dict(tol=1e-5), "tol"),
    "ftol": (dict(ftol=1e-6), dict(ftol=1e-5), "ftol"),
    "the single x0": (dict(), dict(x0=np.float32([2.0])), "x0"),
    "the data": (_fit(), _fit(data=jax.tree.map(lambda a: a + 1, _fit()["data"])), "data"),
    "steps": (dict(), dict(steps=9), "program"),
    "record_every": (dict(), dict(record_every=2), "program"),
    "the grid": (dict(), dict(grid={"learning_rate": LRS * 1.5}), "grid"),
    "the chunking": (dict(), dict(chunk_size=24), "program"),
}


class Stopped(Exception):
    pass


def _stopped(*args, **kwargs):  # the manifest is written first: no need to run a chunk
    raise Stopped


@pytest.mark.parametrize("change", CHANGES)
def test_another_sweep_is_refused(tmp_path, monkeypatch, change):
    before, after, part = CHANGES[change]
    monkeypatch.setattr(runner, "run_chunk", _stopped)
    with pytest.raises(Stopped):
        run(tmp_path, **before)
    with pytest.raises(CheckpointError, match=rf"holds a different sweep .*differs in .*{part}"):
        run(tmp_path, **after)
    with pytest.raises(Stopped):
        run(tmp_path, **before)  # the same sweep again is accepted


def test_closure_over_another_constant_never_mixes_rows(tmp_path, whole, chunk_calls):
    chunk_calls["stop_at"] = 3
    with pytest.raises(KeyboardInterrupt):  # two chunks of three on disk
        run(tmp_path)
    with pytest.raises(CheckpointError, match="differs in objective"):
        run(tmp_path, f=_closure(3.0))  # BASE's f is _closure(2.0)
    chunk_calls["n"] = 0
    resumed = run(tmp_path)
    assert chunk_calls["n"] == 1
    assert_same(resumed, whole)


def test_a_new_process_computes_the_same_fingerprint(tmp_path, monkeypatch):
    """A killed sweep resumes in a new process (another hash seed, other objects for the same
    closure and schedule): its fingerprint is the same."""
    script = (f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
              "import test_checkpoint as t\n"
              "t.runner.run_chunk = t._stopped\n"
              f"try: t.run({str(tmp_path)!r}, **t.SCHEDULED)\n"
              "except t.Stopped: pass\n")
    subprocess.run([sys.executable, "-c", script], check=True,
                   env={**os.environ, "PYTHONHASHSEED": "12345"})
    monkeypatch.setattr(runner, "run_chunk", _stopped)
    with pytest.raises(Stopped):
        run(tmp_path, **SCHEDULED)


def test_manifest_deleted_and_grid_changed(tmp_path):
    run(tmp_path)
    os.remove(tmp_path / "manifest.json")
    with pytest.raises(CheckpointError, match=r"g0-c0\.npz' holds a chunk of a different sweep"):
        run(tmp_path, grid={"learning_rate": LRS * 1.5})


def test_chunk_copied_over_another(tmp_path):
    run(tmp_path)
    shutil.copy(tmp_path / "g0-c0.npz", tmp_path / "g0-c1.npz")
    with pytest.raises(CheckpointError, match=r"g0-c1\.npz' holds chunk 'g0-c0'.*copied"):
        run(tmp_path)


def _rewrite_first_leaf(path):
    with np.load(path) as z:
        arrays = dict(z)
    arrays["leaf0"] = arrays["leaf0"] + 1  # a valid file whose arrays changed after writing
    np.savez(path, **arrays)


DAMAGE = {
    "empty": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "a flipped byte": lambda p: p.write_bytes(
        (lambda b: b[:200] + bytes([b[200] ^ 0xFF]) + b[201:])(p.read_bytes())),
    "another checksum": _rewrite_first_leaf,
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_chunk_is_named_and_recomputed(tmp_path, whole, chunk_calls, damage):
    run(tmp_path)
    DAMAGE[damage](tmp_path / "g0-c1.npz")
    chunk_calls["n"] = 0
    with pytest.warns(CheckpointWarning, match=rf"{tmp_path}'.*g0-c1\.npz' is damaged"):
        resumed = run(tmp_path)
    assert chunk_calls["n"] == 1
    assert_same(resumed, whole)
    assert sorted(p.name for p in tmp_path.iterdir()) == [*CHUNKS, "manifest.json"]


@pytest.mark.parametrize("damage", ["empty", "truncated", "not JSON"])
def test_damaged_manifest_is_named_and_rewritten(tmp_path, whole, chunk_calls, damage):
    run(tmp_path)
    manifest = tmp_path / "manifest.json"
    text = manifest.read_text()
    manifest.write_text({"empty": "", "truncated": text[: len(text) // 2],
                         "not JSON": "\x00garbage"}[damage])
    chunk_calls["n"] = 0
    with pytest.warns(CheckpointWarning, match=rf"{tmp_path}'.*manifest\.json' is damaged"):
        resumed = run(tmp_path)
    assert chunk_calls["n"] == 0  # the chunks prove they belong to this sweep themselves
    assert_same(resumed, whole)
    assert json.loads(manifest.read_text())["fingerprint"]


def test_leftovers_of_killed_runs_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    tmp_path.joinpath(f"g0-c1.npz.tmp{dead}").write_bytes(b"half a chunk")
    tmp_path.joinpath(f"manifest.json.tmp{dead}").write_bytes(b"{")
    live = tmp_path / f"g0-c2.npz.tmp{os.getppid()}"  # a live process may still be writing it
    live.write_bytes(b"")
    run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [*CHUNKS, live.name, "manifest.json"]


def test_checkpoint_naming_a_file_is_refused(tmp_path):
    path = tmp_path / "results.npz"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"results\.npz' is an existing file, not a dir"):
        run(path)


def test_a_function_it_cannot_fingerprint_is_refused(tmp_path):
    lock = threading.Lock()

    def f(x):
        with lock:
            return jnp.sum(x**2)

    with pytest.raises(TypeError, match=r"cannot fingerprint f \(its closure's 'lock'\).*lock"
                                        r".*run without checkpoint="):
        run(tmp_path, f=f)
    assert not tmp_path.joinpath("manifest.json").exists()
