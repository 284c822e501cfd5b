"""gdjax.sweep beside the sweeps people write by hand.

2-D Rosenbrock from (-1.2, 1), Adam, 1000 steps, one config per learning rate (log-spaced
1e-4 .. 1e-1), 4096 and 65536 configs, every peer returning each config's final parameters and
final loss:

* the hand-written ``jit(vmap(scan))`` with ``optax.adam(lr)``: the floor, close to this CPU's
  arithmetic limit (no statuses, no divergence freeze, no history); and the same loop keeping
  gdjax's default history (loss and gradient norm every 10 steps), beside gdjax's default;
* a Python loop of scanned single runs (``gdjax.minimize`` per config): timed on a few configs and
  extrapolated per config (said in the note);
* PyTorch, when installed: a hand-vectorised batched Adam (one ``(N, 2)`` tensor, one learning
  rate per row, autograd for the gradient), and ``torch.optim.Adam`` with one ``param_group`` per
  config (timed on fewer configs and steps, extrapolated per config-step).

``gdjax.sweep`` runs twice: like for like with the hand loop (no history: ``record_every=steps``
records only the start and the end; statuses, the divergence freeze and the best loss stay on),
and with its defaults (a 101-record history of loss and gradient norm).

The 1,048,576-start Himmelblau basin map (:mod:`benchmarks.basin_sweep`) runs in a subprocess (for
its own peak memory), beside a hand-written ``jit(vmap(scan))`` of the same gradient descent.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.harness import Row, best_time, block, first_call_time, torch_or_none
from gdjax import engine, functions, optimizers
from gdjax.descent import minimize
from gdjax.sweep import sweep

STEPS = 1000
X0 = np.float32([-1.2, 1.0])


def _learning_rates(n: int) -> np.ndarray:
    return np.geomspace(1e-4, 1e-1, n).astype(np.float32)


def _adam_step(f, tx):
    """One step of the hand-written loop: optax's Adam on ``jax.grad(f)``; no loss, no checks."""

    def step(carry, _):
        x, state = carry
        u, state = tx.update(jax.grad(f)(x), state, x)
        return (optax.apply_updates(x, u), state), None

    return step


@jax.jit
def _hand(lrs):
    """The hand-written sweep: ``jit(vmap(scan))`` of optax's Adam; final params and loss."""
    f = functions.rosenbrock
    x0 = jnp.asarray(X0)

    def one(lr):
        tx = optax.adam(lr)
        (x, _), _ = jax.lax.scan(_adam_step(f, tx), (x0, tx.init(x0)), length=STEPS)
        return x, f(x)

    return jax.vmap(one)(lrs)


@jax.jit
def _hand_history(lrs):
    """The hand-written sweep keeping gdjax's default history: loss and gradient norm every
    ``STEPS // 100`` steps (an outer scan over records, an inner scan over the steps between)."""
    f = functions.rosenbrock
    x0 = jnp.asarray(X0)
    every = STEPS // 100

    def one(lr):
        tx = optax.adam(lr)

        def block(carry, _):
            loss, g = jax.value_and_grad(f)(carry[0])
            carry, _ = jax.lax.scan(_adam_step(f, tx), carry, length=every)
            return carry, (loss, optax.tree.norm(g))

        (x, _), history = jax.lax.scan(block, (x0, tx.init(x0)), length=STEPS // every)
        return x, f(x), history

    return jax.vmap(one)(lrs)


@jax.jit
def _engine_only(lrs):
    """gdjax's loop alone: ``jit(vmap(engine.run))``, without ``sweep``'s grid handling,
    transfers and gathered replays, and without history (the start and the end only)."""
    tx = optimizers.optimizer("adam")
    x0 = jnp.asarray(X0)

    def one(lr):
        state = optimizers.set_hyperparameters(tx.init(x0), {"learning_rate": lr})
        run = engine.run(engine.autodiff(functions.rosenbrock), tx, x0, steps=STEPS,
                         opt_state=state, record_every=STEPS)
        return run.params, run.loss, run.status

    return jax.vmap(one)(lrs)


def _torch_batched(torch, lrs: np.ndarray, steps: int):
    """Adam vectorised by hand over a ``(N, 2)`` tensor, one learning rate per row."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    x = torch.tensor(np.tile(X0, (len(lrs), 1)), requires_grad=True)
    lr = torch.tensor(lrs)[:, None]
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    for t in range(1, steps + 1):
        loss = (1 - x[:, 0]) ** 2 + 100 * (x[:, 1] - x[:, 0] ** 2) ** 2
        (g,) = torch.autograd.grad(loss.sum(), x)
        with torch.no_grad():
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            x -= lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    with torch.no_grad():
        return x, (1 - x[:, 0]) ** 2 + 100 * (x[:, 1] - x[:, 0] ** 2) ** 2


def _torch_groups(torch, lrs: np.ndarray, steps: int):
    """``torch.optim.Adam`` with one parameter group (one learning rate) per config."""
    xs = [torch.tensor(X0, requires_grad=True) for _ in lrs]
    groups = [{"params": [x], "lr": float(lr)} for x, lr in zip(xs, lrs, strict=True)]
    opt = torch.optim.Adam(groups)
    for _ in range(steps):
        opt.zero_grad()
        sum((1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2 for x in xs).backward()
        opt.step()
    return xs


@functools.partial(jax.jit, static_argnames="steps")
@functools.partial(jax.jit, static_argnums=1)
def _hand_basin(starts, steps):
    """The hand-written basin map: ``jit(vmap(scan))`` of plain gradient descent."""
    f = functions.himmelblau

    def one(x):
        x, _ = jax.lax.scan(lambda x, _: (x - 0.01 * jax.grad(f)(x), None), x, length=steps)
        return x, f(x)

    return jax.vmap(one)(starts)


@jax.jit
def _hand_himmelblau(lrs):
    """Hand-written SGD sweep on Himmelblau from the origin: final params and loss, nothing else
    (a diverged config ends as NaN)."""
    f = functions.himmelblau

    def one(lr):
        x, _ = jax.lax.scan(lambda x, _: (x - lr * jax.grad(f)(x), None), jnp.zeros(2),
                            length=DIVERGING_STEPS)
        return x, f(x)

    return jax.vmap(one)(lrs)


DIVERGING_STEPS = 2000


def _diverging_row(repeat: int) -> Row:
    """A sweep across the stability edge: a third of the configs diverge, at spread-out steps,
    so the diverged configs are replayed with every step evaluated to find each one's step."""
    f = functions.himmelblau
    lrs = np.geomspace(1e-3, 3e-1, 4096).astype(np.float32)
    gd = lambda: block(sweep(f, np.zeros(2, np.float32), "sgd", grid={"learning_rate": lrs},
                             steps=DIVERGING_STEPS, record_every=DIVERGING_STEPS,
                             progress=False).params)
    jl = jnp.asarray(lrs)
    hand = lambda: block(_hand_himmelblau(jl))
    first_call_time(gd)
    first_call_time(hand)
    t_gd = t_hand = float("inf")
    for _ in range(3):
        t_gd = min(t_gd, best_time(gd, repeat=repeat))
        t_hand = min(t_hand, best_time(hand, repeat=repeat))
    res = sweep(f, np.zeros(2, np.float32), "sgd", grid={"learning_rate": lrs},
                steps=DIVERGING_STEPS, record_every=DIVERGING_STEPS, progress=False)
    counts = res.counts()
    steps = res.diverged_at[res.status == "diverged"]
    return Row(
        "sweep", f"himmelblau sgd {DIVERGING_STEPS} steps, 4096 lrs across the edge", t_gd,
        "hand jit(vmap(scan)) sgd", t_hand,
        f"no history; {counts['diverged']} diverge at steps {steps.min()}-{steps.max()} (each "
        "found and frozen; the hand loop ends them as NaN); target >= 0.9x",
    )


def _basin_row() -> Row:
    """The 1,048,576-start basin sweep and its hand-written peer, each a first call in a fresh
    process (gdjax's peak memory its own), twice in alternating order; the best of each."""
    from benchmarks.basin_sweep import STEPS, N

    def side(*flag):
        out = subprocess.run([sys.executable, "-m", "benchmarks.basin_sweep", *flag],
                             capture_output=True, text=True, check=True, timeout=600)
        return json.loads(out.stdout.strip().splitlines()[-1])

    reports, hands = [], []
    for _ in range(2):
        reports.append(side())
        hands.append(side("--hand"))
    report = min(reports, key=lambda r: r["seconds"])
    return Row(
        "sweep", f"himmelblau basin map, {report['starts']} starts ({N}^2), sgd {STEPS} steps",
        report["seconds"], "hand jit(vmap(scan)) sgd", min(h["seconds"] for h in hands),
        f"both first calls (compile included), each in a fresh process (best of 2); gdjax "
        f"peak RSS {max(r['peak_rss_mib'] for r in reports):.0f} MiB; {report['counts']}; "
        "target within 1.5x",
    )


QUAD_A = np.linspace(1.0, 3.0, 8).astype(np.float32)
QUAD_STEPS = 2000


def _quad(x):
    return 0.5 * jnp.sum(QUAD_A * x**2)


@jax.jit
def _hand_quad(lrs):
    """Hand-written SGD sweep on the 8-D quadratic from ones: final params and loss."""

    def one(lr):
        x, _ = jax.lax.scan(lambda x, _: (x - lr * jax.grad(_quad)(x), None),
                            jnp.ones(8, jnp.float32), length=QUAD_STEPS)
        return x, _quad(x)

    return jax.vmap(one)(lrs)


def _quadratic_rows(repeat: int) -> list[Row]:
    """The 8-D quadratic, SGD, 4096 learning rates in [0.1, 0.6] (every config converges, the
    median by step 32): without a tolerance (all 2,000 steps, like the hand loop) and with
    ``tol=1e-5`` (early exit: the hand loop cannot stop)."""
    lrs = np.linspace(0.1, 0.6, 4096).astype(np.float32)
    x0 = np.ones(8, np.float32)

    def gd(**kw):
        return lambda: block(sweep(_quad, x0, "sgd", grid={"learning_rate": lrs},
                                   steps=QUAD_STEPS, progress=False, **kw).params)

    cases = [
        ("no tol, no history", gd(record_every=QUAD_STEPS), "target >= 0.9x"),
        ("no tol, default history", gd(), "the peer keeps no history"),
        ("tol=1e-5 (early exit), no history", gd(tol=1e-5, record_every=QUAD_STEPS),
         "target >= 2x"),
        ("tol=1e-5 (early exit), default history", gd(tol=1e-5), "target >= 2x"),
    ]
    jl = jnp.asarray(lrs)
    hand = lambda: block(_hand_quad(jl))
    first_call_time(hand)
    for _, fn, _ in cases:
        first_call_time(fn)
    times = {}
    for _ in range(3):  # interleaved rounds: this machine's speed drifts
        times["hand"] = min(times.get("hand", np.inf), best_time(hand, repeat=repeat))
        for name, fn, _ in cases:
            times[name] = min(times.get(name, np.inf), best_time(fn, repeat=repeat))
    res = sweep(_quad, x0, "sgd", grid={"learning_rate": lrs}, steps=QUAD_STEPS, tol=1e-5,
                progress=False)
    note = f"stops at steps {res.steps.min()}-{res.steps.max()}, median {np.median(res.steps):.0f}"
    return [Row("sweep", f"8-D quadratic sgd {QUAD_STEPS} steps, 4096 lrs, {name}", times[name],
                "hand jit(vmap(scan)) sgd", times["hand"],
                f"{target}" + (f"; {note}" if "tol" in name else ""))
            for name, _, target in cases]


def run(quick: bool) -> list[Row]:
    rows = []
    torch = torch_or_none()
    sizes = (4096,) if quick else (4096, 65536)
    f = functions.rosenbrock
    for n in sizes:
        lrs = _learning_rates(n)
        case = f"rosenbrock 2-D adam {STEPS} steps, {n} lrs"

        def gd(lrs=lrs, record_every=None):
            return block(sweep(f, X0, "adam", grid={"learning_rate": lrs}, steps=STEPS,
                               record_every=record_every, progress=False).params)

        # Like for like: the hand loop keeps no history, so neither does this one (only the
        # start and the end); statuses, the divergence freeze and the best loss stay on.
        lean = functools.partial(gd, lrs=lrs, record_every=STEPS)

        def hand(lrs=lrs):
            return block(_hand(lrs))

        jlrs = jnp.asarray(lrs)
        alone = lambda jlrs=jlrs: block(_engine_only(jlrs))
        hist = lambda jlrs=jlrs: block(_hand_history(jlrs))
        first = first_call_time(gd)
        for fn in (hand, lean, alone, hist):
            first_call_time(fn)
        repeat = 3 if n > 10_000 else 5
        # interleaved rounds, every variant in each: this machine's speed drifts between runs
        t_gd = t_hand = t_lean = t_alone = t_hist = float("inf")
        for _ in range(3):
            t_gd = min(t_gd, best_time(gd, repeat=repeat))
            t_hand = min(t_hand, best_time(hand, repeat=repeat))
            t_lean = min(t_lean, best_time(lean, repeat=repeat))
            t_alone = min(t_alone, best_time(alone, repeat=repeat))
            t_hist = min(t_hist, best_time(hist, repeat=repeat))
        res = sweep(f, X0, "adam", grid={"learning_rate": lrs}, steps=STEPS, progress=False)
        x_hand, loss_hand = _hand(lrs)
        np.testing.assert_allclose(res.loss, loss_hand, rtol=1e-3, atol=1e-6)
        rows.append(Row("sweep", case, t_lean, "hand jit(vmap(scan)) optax.adam", t_hand,
                        "like for like: no history (record_every=steps); target >= 0.95x"))
        rows.append(Row("sweep", "  engine loop only (jit(vmap), no history)", t_alone,
                        "hand jit(vmap(scan)) optax.adam", t_hand,
                        "statuses, freeze, best loss on; no sweep bookkeeping"))
        rows.append(Row("sweep", case + ", 101-record history", t_gd,
                        "hand jit(vmap(scan)) optax.adam", t_hand,
                        f"the default history; gdjax first call {first:.2f} s (compile)"))
        # the same records as gdjax's default history (gdjax adds the final state as the 101st)
        _, _, (h_loss, h_norm) = _hand_history(jlrs)
        np.testing.assert_allclose(res.history.loss[:, :-1], h_loss, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(res.history.grad_norm[:, :-1], h_norm, rtol=1e-3, atol=1e-4)
        rows.append(Row("sweep", case + ", 101-record history", t_gd,
                        "hand jit(vmap(scan)), same history", t_hist,
                        "like for like: the peer records loss and gradient norm every 10 "
                        "steps; target >= 0.95x"))

        k = 16
        loop = lambda k=k, lrs=lrs: [
            block(minimize(f, X0, "adam", learning_rate=float(lr), steps=STEPS).params)
            for lr in lrs[:k]
        ]
        loop()
        t_loop = best_time(loop, repeat=3) / k * n
        rows.append(Row("sweep", case, t_gd, "python loop of minimize", t_loop,
                        f"timed on {k} configs, extrapolated x{n // k}"))

        if torch is not None:
            batched = lambda lrs=lrs: _torch_batched(torch, lrs, STEPS)
            t_batched = best_time(batched, repeat=2 if n > 10_000 else 3)
            rows.append(Row("sweep", case, t_lean, f"torch {torch.__version__} batched Adam",
                            t_batched, f"{torch.get_num_threads()} threads; gdjax without "
                            "history, as the peer keeps none; target >= 50x"))
            groups, group_steps = 256, 20
            few = lambda lrs=lrs, groups=groups, group_steps=group_steps: _torch_groups(
                torch, lrs[:groups], group_steps
            )
            t_groups = best_time(few, repeat=2) * (n / groups) * (STEPS / group_steps)
            rows.append(Row("sweep", case, t_lean, "torch.optim.Adam param_groups", t_groups,
                            f"timed on {groups} groups x {group_steps} steps, extrapolated; "
                            "gdjax without history"))
    rows.append(_diverging_row(3 if quick else 5))
    rows += _quadratic_rows(3 if quick else 5)
    if not quick:
        rows.append(_basin_row())
    return rows


if __name__ == "__main__":
    t0 = time.perf_counter()
    for row in run(quick="--quick" in sys.argv):
        print(f"{row.case:55s} gdjax {row.gdjax_s:8.3f}s  {row.peer:45s} {row.peer_s:9.3f}s "
              f"x{row.speedup:6.2f}  {row.note}")
    print(f"total {time.perf_counter() - t0:.1f} s")
