"""The config axis sharded over 8 forced host devices, and over two processes joined by
``jax.distributed.initialize``: results identical (bitwise) to one device.

Each run is a fresh subprocess (device counts are fixed when JAX starts), with a timeout so that a
hung collective fails the test instead of blocking it.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gdjax import StatusArray

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 180

WORKER = """
import sys
import jax

processes, process_id, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=processes,
                               process_id=process_id, initialization_timeout=60)
sys.path.insert(0, "tests")
from test_distributed import run_sweep, save

save(run_sweep(), out, devices=len(jax.devices()), processes=jax.process_count())
"""


def run_sweep():
    """40 configs, some diverged: three chunks on one device, one on eight (16 per device)."""
    from gdjax import functions
    from gdjax.sweep import sweep

    return sweep(
        functions.himmelblau, np.float32([0.0, 0.0]), "sgd", steps=300, tol=1e-3,
        grid={"x0": np.float32([[0, 0], [-4, 4], [1, -3], [2, 2], [-1, -1]]),
              "learning_rate": [1e-3, 3e-3, 1e-2, 0.02, 0.03, 0.05, 0.1, 0.2]},
        chunk_size=16, progress=False,
    )


def save(res, path, **extra):
    np.savez(path, params=res.params, loss=res.loss, status=np.asarray(res.status),
             diverged_at=res.diverged_at, history=res.history.loss, **extra)


def spawn(out, *, devices, processes=1, process_id=0, port=0):
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    env = dict(os.environ, XLA_FLAGS=flags.strip(),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(processes), str(process_id), str(port), str(out)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def finish(*procs):
    try:
        for p in procs:
            output, _ = p.communicate(timeout=TIMEOUT)
            assert p.returncode == 0, output[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "r.npz"
    finish(spawn(out, devices=1))
    return dict(np.load(out))


def assert_identical(a, b):
    for key in ("params", "loss", "status", "diverged_at", "history"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_reference_has_divergence(one_device):
    assert int(one_device["devices"]) == 1
    status = StatusArray.of(one_device["status"])
    assert (status == "diverged").any() and (status == "converged").any()


def test_eight_devices_identical(one_device, tmp_path):
    out = tmp_path / "r.npz"
    finish(spawn(out, devices=8))
    eight = dict(np.load(out))
    assert int(eight["devices"]) == 8
    assert_identical(eight, one_device)


COMPACT_WORKER = """
import sys
import jax
import numpy as np
sys.path.insert(0, "tests")
from test_distributed import compact_sweeps

np.savez(sys.argv[1], devices=len(jax.devices()), **compact_sweeps())
"""


def compact_sweeps():
    """512 configs on every device there is, with and without compaction: the legs' sizes and
    each run's fields."""
    from gdjax import functions
    from gdjax.sweep import runner, sweep

    runner.COMPACT_MIN = 8  # (1024 per device otherwise)
    legs, leg = [], runner.program.leg
    runner.program.leg = lambda v, s, c, b, rows, *a: legs.append(len(rows)) or leg(
        v, s, c, b, rows, *a)
    starts = np.stack(np.meshgrid(np.linspace(-4, 4, 16), np.linspace(-4, 4, 8)), -1)
    kw = dict(grid={"x0": starts.reshape(-1, 2).astype(np.float32),
                    "learning_rate": [3e-3, 1e-2, 0.02, 0.04]},
              steps=400, tol=1e-3, progress=False)
    out = {}
    for compact in (True, False):
        res = sweep(functions.himmelblau, np.float32([0.0, 0.0]), "sgd", compact=compact, **kw)
        out.update({f"{k}_{compact}": np.asarray(v) for k, v in dict(
            params=res.params, loss=res.loss, status=res.status, steps=res.steps,
            history=res.history.loss).items()})
    out["legs"] = np.asarray(legs)
    return out


def test_compaction_on_eight_devices_gives_the_full_batch_results(tmp_path):
    # the running configs gathered from and put back into a chunk sharded over 8 devices
    out = tmp_path / "c.npz"
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
               "--xla_force_host_platform_device_count=8".strip(),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    finish(subprocess.Popen([sys.executable, "-c", COMPACT_WORKER, str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    got = dict(np.load(out))
    assert int(got["devices"]) == 8
    assert len(got["legs"]) and got["legs"].max() < 512, got["legs"]  # compacted
    status = StatusArray.of(got["status_True"])
    assert (status == "converged").any() and (status != "converged").any()
    for key in ("params", "loss", "status", "steps", "history"):
        np.testing.assert_array_equal(got[f"{key}_True"], got[f"{key}_False"], err_msg=key)


def test_two_processes_identical(one_device, tmp_path):
    port = free_port()
    outs = [tmp_path / f"r{i}.npz" for i in range(2)]
    finish(*[spawn(outs[i], devices=2, processes=2, process_id=i, port=port) for i in range(2)])
    for out in outs:  # every process holds the whole result
        got = dict(np.load(out))
        assert int(got["devices"]) == 4 and int(got["processes"]) == 2
        assert_identical(got, one_device)
