"""Guards against changes that once passed the whole suite (each was injected into a copy of
gdjax and survived): a sweep that drops ``ftol``, a command line that ignores ``--tol`` or
``--order``, a checker that stops measuring float32 rounding."""

import contextlib
import io
import json
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

import gdjax
from gdjax import cli


def test_sweep_honours_ftol_as_minimize_does():
    f = lambda x: jnp.sum(jnp.log1p(x**2))  # noqa: E731 (slow near 0: ftol stops it)
    lrs = [0.05, 0.2, 0.5]
    res = gdjax.sweep(f, np.float32([2.0, -1.0]), "sgd", grid={"learning_rate": lrs},
                      steps=300, ftol=1e-6, progress=False)
    assert res.counts()["converged"] == 3
    for i, lr in enumerate(lrs):
        alone = gdjax.minimize(f, np.float32([2.0, -1.0]), "sgd", learning_rate=lr, steps=300,
                               ftol=1e-6)
        assert alone.status == "converged" and int(res.steps[i]) == int(alone.steps) < 300


def _cli_json(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    return code, json.loads(out.getvalue())


def test_cli_sweep_honours_tol(tmp_path):
    argv = ["sweep", "sphere", "--lr", "0.1,0.3", "--steps", "300", "--json", "--no-plots",
            "--out", str(tmp_path)]
    code, loose = _cli_json([*argv, "--tol", "1e-3"])
    assert code == 0 and loose["counts"]["converged"] == 2
    code, plain = _cli_json(argv)
    assert code == 0 and plain["counts"]["max_steps"] == 2


def test_cli_check_honours_order(tmp_path, monkeypatch):
    # a custom rule whose first derivative is right and whose second is not (its cos is a
    # constant to autodiff): only --order 2 can see it
    (tmp_path / "second_order.py").write_text(textwrap.dedent("""
        import jax, jax.numpy as jnp

        @jax.custom_jvp
        def f(x):
            return jnp.sum(jnp.sin(x))

        @f.defjvp
        def _jvp(primals, tangents):
            (x,), (t,) = primals, tangents
            return f(x), jnp.sum(jnp.cos(jax.lax.stop_gradient(x)) * t)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    first = ["check", "second_order:f", "--shape", "4", "--json"]
    assert _cli_json(first)[0] == 0
    code, report = _cli_json([*first, "--order", "2"])
    assert code == 1 and not report["ok"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_rounding_is_measured_not_reported_as_a_wrong_gradient(dtype):
    # 3000.1 x0 cancels 1.5 x0^2 to a gradient of about 0.04 at x0 = 1000.047: float32 autodiff
    # rounds it by ~1e-4, which the checker must measure, not call a wrong gradient
    f = lambda x: 1.5 * x[0] ** 2 - 3000.1 * x[0] + jnp.sin(x[1])  # noqa: E731
    x = np.array([1000.047, 0.3], dtype)
    assert gdjax.check_grads(f, x).ok
