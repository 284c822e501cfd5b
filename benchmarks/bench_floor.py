"""How far any code could go on this machine: the sweep benchmark against its arithmetic floor.

The sweep target ">= 50x the batched PyTorch Adam" asks more of the hardware than it has, and
this benchmark shows by how much. ``adam_floor.c`` is the sweep benchmark's problem (2-D
Rosenbrock, Adam, 1000 steps, one config per learning rate) written the way no array program
can run it: each config's state kept in registers for all its steps, 16 configs per vector,
IEEE float32 arithmetic, compiled with ``-O3 -march=native`` and run on all cores with OpenMP.
It is checked against ``gdjax.sweep``'s answers. Its time bounds what gdjax (or the hand-written
``jit(vmap(scan))``, or anything else) can reach against torch: ``torch / floor`` is the largest
ratio possible here.

Skipped (no rows) when ``gcc`` is not on the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.bench_sweep import STEPS, X0, _learning_rates, _torch_batched
from benchmarks.harness import Row, best_time, block, first_call_time, torch_or_none
from gdjax import functions
from gdjax.sweep import sweep

SOURCE = Path(__file__).with_name("adam_floor.c")


def _floor(binary: Path, lrs: np.ndarray, work: Path) -> tuple[float, np.ndarray]:
    """The C kernel's best time over 5 runs (seconds) and its final (x, y) per config."""
    lr_file, out_file = work / "lrs.bin", work / "out.bin"
    lrs.astype(np.float32).tofile(lr_file)
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    out = subprocess.run([str(binary), str(lr_file), str(len(lrs)), str(STEPS), str(out_file)],
                         capture_output=True, text=True, check=True, env=env, timeout=120)
    return float(out.stdout) / 1e3, np.fromfile(out_file, np.float32).reshape(-1, 2)


def run(quick: bool = False) -> list[Row]:
    gcc = shutil.which("gcc")
    if gcc is None:
        return []
    torch = torch_or_none()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        binary = work / "adam_floor"
        subprocess.run([gcc, "-O3", "-march=native", "-fno-math-errno", "-fopenmp", str(SOURCE),
                        "-o", str(binary), "-lm"], check=True, capture_output=True, timeout=120)
        for n in (4096,) if quick else (4096, 65536):
            lrs = _learning_rates(n)
            gd = lambda lrs=lrs: block(sweep(functions.rosenbrock, X0, "adam",  # noqa: E731
                                             grid={"learning_rate": lrs}, steps=STEPS,
                                             record_every=STEPS, progress=False).params)
            first_call_time(gd)
            t_gd = min(best_time(gd, repeat=5) for _ in range(3))
            t_floor, xy = _floor(binary, lrs, work)
            res = sweep(functions.rosenbrock, X0, "adam", grid={"learning_rate": lrs},
                        steps=STEPS, record_every=STEPS, progress=False)
            # the same computation: the same answers, to float32 rounding along 1000 steps
            np.testing.assert_allclose(xy, res.params, rtol=1e-3, atol=1e-4)
            note = f"{os.cpu_count()} threads, state in registers, IEEE float32"
            if torch is not None:
                t_torch = best_time(lambda lrs=lrs: _torch_batched(torch, lrs, STEPS),
                                    repeat=2 if n > 10_000 else 3)
                note += (f"; torch batched {t_torch * 1e3:.0f} ms: the floor is "
                         f"{t_torch / t_floor:.1f}x torch, gdjax {t_torch / t_gd:.1f}x")
            rows.append(Row("floor", f"rosenbrock 2-D adam {STEPS} steps, {n} lrs", t_gd,
                            "C kernel (gcc -O3 -march=native, OpenMP)", t_floor, note))
    return rows
