"""The detection floor: a single-coordinate error just above ``report.detection_floor`` is
caught at the coordinate that sets it, in full and in directions mode; a passing report says that
smaller errors could hide."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_check import custom_sin_times_x

from gdjax.check import check_grads

CASES = {
    "full": (jnp.linspace(-2.0, 3.0, 40), dict(modes=("rev",))),
    "directions": (
        jnp.linspace(-2.0, 3.0, 600),
        dict(modes=("rev",), full_threshold=0, n_directions=8),
    ),
}


@pytest.mark.parametrize("mode", CASES)
def test_an_error_just_above_the_floor_is_caught_where_the_floor_is_set(mode):
    x, kwargs = CASES[mode]
    report = check_grads(custom_sin_times_x(), x, **kwargs)
    assert report.ok and report.mode == mode
    floor, (leaf, (i,)) = report.detection_floor, report.floor_at
    assert leaf == ""  # x is one array
    assert f"detection floor {floor:.1e}" in str(report) and "could hide" in str(report)
    g = np.abs(np.sin(np.asarray(x, np.float64)) + np.asarray(x) * np.cos(np.asarray(x)))
    assert g[i] >= np.median(g)
    rtol = np.sqrt(np.finfo(np.float32).eps)
    if mode == "full":  # about rtol, whatever n
        assert rtol <= floor <= 1.2 * rtol
    else:  # about rtol sqrt(n / B) g_rms / |g_i|
        estimate = rtol * np.sqrt(x.size / 8) * np.sqrt(np.mean(g**2)) / g[i]
        assert 0.5 * estimate <= floor <= 2 * estimate
    wrong = check_grads(custom_sin_times_x(wrong_at=i, factor=1 + 1.02 * floor), x, **kwargs)
    assert (wrong.kind, wrong.index) == ("wrong gradient", (i,)), str(wrong)


def test_the_issues_shrunk_float32_case_is_caught_in_directions_mode():
    """``w.x + 0.1 |x|^2`` at (0, 0, 1), coordinate 0 of the VJP scaled by 1.001: reported OK
    when random directions diluted it over the three coordinates."""
    w = jnp.array([1 / 3, 2 / 3, 1.0])

    @jax.custom_vjp
    def f(x):
        return jnp.dot(w, x) + 0.1 * jnp.sum(x**2)

    f.defvjp(lambda x: (f(x), x), lambda x, g: (g * (w + 0.2 * x).at[0].multiply(1.001),))
    report = check_grads(f, jnp.array([0.0, 0.0, 1.0]), modes=("rev",), full_threshold=0)
    assert (report.mode, report.kind, report.index) == ("directions", "wrong gradient", (0,))
