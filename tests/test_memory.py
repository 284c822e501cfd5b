"""``memory_budget`` is a ceiling on what a sweep holds, or an error before any work; the
history's record steps are stored once.

The ceiling is measured as a process sees it: a fresh subprocess records its peak resident set
(``VmHWM``) after the JAX runtime has started and run a small sweep (its baseline), then runs a
sweep whose objective has a large intermediate, and reports the peak again.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gdjax
from gdjax import engine
from gdjax.sweep import runner

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20

ALLOWANCE = 96 * MiB
"""Beyond the budget, over the baseline, what ``memory_budget`` does not count: compiling the
sweep's programs (20-35 MiB measured here) and freed blocks that glibc's heap keeps (up to
twice its largest mmap threshold, 32 MiB)."""

CHILD = """
import json, sys
import numpy as np
import jax.numpy as jnp
import gdjax
from gdjax.sweep import runner

def peak():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM"))

configs, budget = int(sys.argv[1]), int(sys.argv[2])
gdjax.sweep(lambda x: (x ** 2).sum(), np.float32([1.0]), "sgd",
            grid={"learning_rate": [0.1]}, steps=5, progress=False)
baseline = peak()
w = jnp.linspace(0.5, 1.5, 1 << 13, dtype=jnp.float32)  # a 32 KiB intermediate per config
chunks = []
run_chunk = runner.run_chunk
runner.run_chunk = lambda v, *a, **k: chunks.append(len(v["config"])) or run_chunk(v, *a, **k)
res = gdjax.sweep(lambda x, w: jnp.mean(jnp.sin(x[0] * w) ** 2 + (x[1] * w) ** 2),
                  np.float32([1.0, 1.0]), "sgd", args=(w,),
                  grid={"learning_rate": np.linspace(0.01, 0.1, configs, dtype=np.float32)},
                  steps=3, memory_budget=budget, progress=False)
assert len(res) == configs and np.isfinite(res.loss).all()
print(json.dumps({"baseline": baseline, "peak": peak(), "chunks": chunks}))
"""


def test_peak_memory_stays_within_the_budget():
    # 2,048 configs each holding four 32 KiB intermediates at once: 256 MiB of XLA
    # temporaries in one chunk, which the sweep ran before the budget counted them (a peak
    # of about 300 MiB over the baseline); now chunks of about 300 configs
    budget = 64 * MiB
    out = subprocess.run([sys.executable, "-c", CHILD, "2048", str(budget)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.splitlines()[-1])
    grown = seen["peak"] - seen["baseline"]
    assert grown <= budget + ALLOWANCE, (
        f"peak {seen['peak'] / MiB:.0f} MiB = baseline {seen['baseline'] / MiB:.0f} MiB + "
        f"{grown / MiB:.0f} MiB, past the budget {budget / MiB:.0f} MiB + allowance "
        f"{ALLOWANCE / MiB:.0f} MiB; chunks {seen['chunks']}"
    )
    assert len(seen["chunks"]) > 1, seen  # the budget split the grid


def bowl(x):
    return 0.5 * (x**2).sum()


X0 = np.float32([1.0, -1.0])
LRS = np.linspace(0.1, 0.3, 40, dtype=np.float32)


@pytest.fixture
def chunks(monkeypatch):
    """The sizes of the chunks that ran."""
    sizes = []
    run_chunk = runner.run_chunk
    monkeypatch.setattr(runner, "run_chunk",
                        lambda v, *a, **k: sizes.append(len(v["config"])) or run_chunk(v, *a, **k))
    return sizes


@pytest.mark.parametrize("configs", [16, 40])
def test_history_steps_are_stored_once(configs, chunks):
    res = gdjax.sweep(bowl, X0, "sgd", grid={"learning_rate": LRS[:configs]}, steps=20,
                      record_every=5, chunk_size=16, progress=False)
    assert len(chunks) == -(-configs // 16)
    step = res.history.step
    assert step.shape == (configs, 5) and step.strides[0] == 0  # one row, seen by every config
    np.testing.assert_array_equal(step, np.broadcast_to(engine.record_steps(20, 5), step.shape))
    np.testing.assert_array_equal(res.result(configs - 1).history.step, [0, 5, 10, 15, 20])


def test_a_result_past_the_budget_is_refused_before_any_work(chunks):
    lrs = np.linspace(0.01, 0.1, 2000)
    with pytest.raises(ValueError, match=r"memory_budget=1048576 bytes cannot hold this sweep's "
                       r"result: 2000 configs x 1001 history records need (\d+) bytes.*"
                       r"record_every") as e:
        gdjax.sweep(bowl, X0, "sgd", grid={"learning_rate": lrs}, steps=1000, record_every=1,
                    memory_budget=1 << 20)
    assert int(re.search(r"need (\d+) bytes", str(e.value))[1]) > 2000 * 1001 * 8  # loss, grad norm
    assert chunks == []


@pytest.mark.parametrize("chunk_size", [None, 16])
def test_a_chunk_past_the_budget_is_refused_before_any_work(chunk_size, chunks):
    # the result fits in 4 KiB; the compiled program of the smallest chunk does not
    what = "even the smallest chunk" if chunk_size is None else "chunk_size=16"
    with pytest.raises(ValueError, match=rf"memory_budget=4096 bytes is too small for {what} "
                       r"\(16 configs.*needs \d+ bytes .*temporaries as XLA reports them"):
        gdjax.sweep(bowl, X0, "sgd", grid={"learning_rate": LRS[:16]}, steps=20, record_every=5,
                    chunk_size=chunk_size, memory_budget=4096, progress=False)
    assert chunks == []
