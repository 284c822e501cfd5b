"""Writing a large sweep's results: the files ``gdjax sweep`` writes now against the ones it wrote
before, side by side in one process.

The result is what ``gdjax sweep himmelblau --starts 262144`` holds: 262,144 configs of a 2-D
function (learning rate, seed and start per config, float32 outcomes and parameters) with the
64 loss and gradient-norm records per config that the sweep's default history keeps at that size
(64 MiB, :data:`gdjax.sweep.HISTORY_BYTES`). The arrays are synthetic (random, fixed seed): what
is timed is the writing, not the sweep.

* before: ``sweep.csv`` (one text row per config) and ``sweep.json`` (everything, history
  included, as JSON numbers);
* now: ``sweep.npz`` (binary arrays, no history) and ``sweep_summary.json`` (counts and the best
  config), what ``gdjax sweep`` writes by default; and with ``--history`` (history in the npz).

Run with ``python -m benchmarks write`` (``--quick``: 16,384 configs).
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from benchmarks.harness import Row, first_call_time
from gdjax.engine import History
from gdjax.results import SweepResult

RECORDS = 64


def _result(n: int) -> SweepResult:
    rng = np.random.default_rng(0)
    loss = rng.exponential(1e-3, n).astype(np.float32)
    steps = np.full((n, RECORDS), np.arange(RECORDS, dtype=np.int32) * 16)
    return SweepResult(
        grid={"learning_rate": np.full(n, 0.01), "seed": np.zeros(n, np.int64),
              "x0": rng.uniform(-5, 5, (n, 2)).astype(np.float32)},
        params=rng.normal(size=(n, 2)).astype(np.float32), loss=loss, best_loss=loss,
        grad_norm=rng.exponential(1e-2, n).astype(np.float32),
        status=np.where(rng.random(n) < 0.9, 1, 2).astype(np.int8),
        steps=np.full(n, 1000), diverged_at=np.full(n, -1),
        history=History(step=steps, loss=rng.random((n, RECORDS), np.float32),
                        grad_norm=rng.random((n, RECORDS), np.float32)),
    )


def _summary(res: SweepResult, path: str) -> None:
    best = res.best()
    doc = {"configs": len(res), "counts": res.counts(),
           "best": {"index": best.index, "loss": best.loss, "params": best.params.tolist()}}
    with open(path, "w") as fh:
        json.dump(doc, fh, indent=2)


def _size(folder: str, *names: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, n)) for n in names)


def run(quick: bool = False) -> list[Row]:
    n = 16_384 if quick else 262_144
    res = _result(n)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        p = lambda name: os.path.join(d, name)  # noqa: E731

        def before() -> None:
            res.to_csv(p("sweep.csv"))
            res.to_json(p("sweep.json"))

        def now() -> None:
            res.to_npz(p("sweep.npz"), history=False)
            _summary(res, p("sweep_summary.json"))

        def now_history() -> None:
            res.to_npz(p("history.npz"), history=True)

        old_s = first_call_time(before)
        old_bytes = _size(d, "sweep.csv", "sweep.json")
        new_s = first_call_time(now)
        new_bytes = _size(d, "sweep.npz", "sweep_summary.json")
        hist_s = first_call_time(now_history)
        hist_bytes = _size(d, "history.npz")
    mb = lambda b: f"{b / 1e6:.1f} MB"  # noqa: E731
    peer = "CSV + JSON (before)"
    rows.append(Row("write", f"{n:,} configs, 2-D: npz + summary (default)", new_s, peer,
                    old_s, f"{mb(new_bytes)} vs {mb(old_bytes)}"))
    rows.append(Row("write", f"{n:,} configs, 2-D: npz with --history ({RECORDS} records)",
                    hist_s, peer, old_s, f"{mb(hist_bytes)} vs {mb(old_bytes)}"))
    return rows
