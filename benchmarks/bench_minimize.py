"""gdjax.minimize and gdjax.fit beside the loops people write by hand.

* ``minimize``: 2-D Rosenbrock, Adam, 1000 steps, loss recorded every step, against
  (a) the hand-written optax ``lax.scan`` loop under ``jit`` (also returning the loss per step) and
  (b) the tutorial form: a jitted step called from a Python ``for`` loop.
* ``fit``: a 64-32-10 MLP on scikit-learn's ``load_digits``, Adam, batch 32, against the seed's
  form:
  a PyTorch ``DataLoader`` loop (only when torch is installed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.harness import Row, best_time, block, first_call_time, torch_or_none
from gdjax import engine, functions
from gdjax.batching import fit
from gdjax.descent import minimize
from gdjax.optimizers import optimizer

STEPS = 1000
LR = 1e-2


def _hand_scan(f, tx, steps, norm=False):
    """The hand-written optax loop: ``lax.scan`` under ``jit``, loss recorded every step (and
    the gradient norm too with ``norm``: gdjax's default history)."""

    @jax.jit
    def go(x):
        def step(carry, _):
            x, state = carry
            loss, g = jax.value_and_grad(f)(x)
            u, state = tx.update(g, state, x)
            return (optax.apply_updates(x, u), state), (loss, optax.tree.norm(g)) if norm else loss

        (x, _), losses = jax.lax.scan(step, (x, tx.init(x)), length=steps)
        return x, losses

    return go


def _rosenbrock_rows(quick: bool) -> list[Row]:
    f = functions.rosenbrock
    tx = optax.adam(LR)
    repeat = 5 if quick else 20
    rows = []
    for dim in (2, 1000):
        x0 = jnp.zeros(dim).at[::2].set(-1.2).at[1::2].set(1.0)
        hand_scan = _hand_scan(f, tx, STEPS)
        gd = lambda x0=x0: block(minimize(f, x0, "adam", learning_rate=LR, steps=STEPS).params)
        hs = lambda x0=x0, hand_scan=hand_scan: block(hand_scan(x0))
        gd_first, hs_first = first_call_time(gd), first_call_time(hs)
        t_gd, t_hs = best_time(gd, repeat=repeat), best_time(hs, repeat=repeat)
        # same optimiser, same start: the same answer (float32, fused differently)
        res = minimize(f, x0, "adam", learning_rate=LR, steps=STEPS)
        np.testing.assert_allclose(res.params, hand_scan(x0)[0], rtol=1e-3, atol=1e-5)
        case = f"rosenbrock {dim}-D adam {STEPS} steps"
        # The same loop with the learning rate as an argument in inject_hyperparams' state, as
        # gdjax keeps it (a new value must not recompile): what that property costs by itself.
        tx_inj = optax.inject_hyperparams(optax.adam)(learning_rate=LR)
        hand_inj = _hand_scan(f, tx_inj, STEPS)
        hi = lambda x0=x0, hand_inj=hand_inj: block(hand_inj(x0))
        first_call_time(hi)
        hand_norm = _hand_scan(f, tx, STEPS, norm=True)
        hn = lambda x0=x0, hand_norm=hand_norm: block(hand_norm(x0))
        first_call_time(hn)
        np.testing.assert_allclose(res.history.grad_norm[:-1], hand_norm(x0)[1][1], rtol=1e-3,
                                   atol=1e-4)
        t_gd, t_hs, t_hi, t_hn = (min(best_time(g, repeat=repeat) for _ in range(2))
                                  for g in (gd, hs, hi, hn))
        rows += [
            Row("minimize", case, t_gd, "optax lax.scan (jit)", t_hs,
                "whole call; target >= 0.67x (1.5x the hand loop's time)"),
            Row("minimize", case, t_gd, "optax lax.scan, loss and grad norm", t_hn,
                "whole call; the peer records gdjax's default history (both, every step)"),
            Row("minimize", case, t_gd, "optax lax.scan, inject_hyperparams", t_hi,
                "whole call; the peer keeps lr in its state as gdjax does"),
            Row("minimize", "  first call incl. compile", gd_first, "optax lax.scan (jit)",
                hs_first),
        ]
        if dim == 2:
            # The loop alone, without minimize's argument checks and result record.
            source = engine.autodiff(f)
            tx_named = optimizer("adam", learning_rate=LR)
            loop = jax.jit(lambda x: engine.run(source, tx_named, x, steps=STEPS))  # noqa: B023
            lp = lambda: block(loop(x0))  # noqa: B023
            first_call_time(lp)
            rows.append(Row("minimize", "  engine loop only (jit)",
                            min(best_time(lp, repeat=repeat) for _ in range(3)),
                            "optax lax.scan (jit)", t_hs))

            @jax.jit
            def hand_step(x, state):
                loss, g = jax.value_and_grad(f)(x)
                u, state = tx.update(g, state, x)
                return optax.apply_updates(x, u), state, loss

            def tutorial_loop(x0=x0):
                x, state = x0, tx.init(x0)
                losses = []
                for _ in range(STEPS):
                    x, state, loss = hand_step(x, state)
                    losses.append(loss)
                return block((x, losses))

            first_call_time(tutorial_loop)
            t_loop = best_time(tutorial_loop, repeat=1 if quick else 3)
            rows.append(Row("minimize", case, t_gd, "jitted step, Python loop", t_loop,
                            "target >= 50x"))
    return rows


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int32)


def _fit_rows(quick: bool) -> list[Row]:
    torch = torch_or_none()
    if torch is None:
        return []
    x, y = _digits()
    epochs = 2 if quick else 5
    data = {"x": jnp.asarray(x), "y": jnp.asarray(y)}

    def forward(p, xb):
        return jnp.tanh(xb @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def loss(p, batch):
        logp = jax.nn.log_softmax(forward(p, batch["x"]))
        return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], 1))

    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(64, 32)).astype(np.float32) / 8
    w2 = rng.normal(size=(32, 10)).astype(np.float32) / np.sqrt(32)
    params = {"w1": jnp.asarray(w1), "b1": jnp.zeros(32), "w2": jnp.asarray(w2),
              "b2": jnp.zeros(10)}
    gd = lambda: block(fit(loss, params, data, optimizer="adam", learning_rate=1e-3,
                           batch_size=32, epochs=epochs).params)

    torch.manual_seed(0)
    torch.set_num_threads(2)
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y).long())

    def torch_loop():
        model = torch.nn.Sequential(
            torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10)
        )
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True, drop_last=True)
        for _ in range(epochs):
            for xb, yb in loader:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()

    first_call_time(gd)
    t_gd = best_time(gd, repeat=5)
    t_torch = best_time(torch_loop, repeat=2)
    return [
        Row("fit", f"digits MLP adam batch 32, {epochs} epochs", t_gd,
            f"torch {torch.__version__} DataLoader loop", t_torch, "target >= 10x"),
    ]


def run(quick: bool = False) -> list[Row]:
    return _rosenbrock_rows(quick) + _fit_rows(quick)
