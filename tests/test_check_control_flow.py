"""Functions that cannot be traced (Python control flow on values) are checked eagerly, as
``jax.test_util.check_grads`` checks them: jax's ``test_python_control_flow`` cases for
``custom_jvp`` and ``custom_vjp``, with the test's rules (wrong: 2 and 3) and right ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdjax.check import check_grads


def sin_or_cos(x):
    if x > 0:
        return jnp.sin(x)
    else:
        return jnp.cos(x)


def slope(x, right):
    """The rule's derivative: jax's test uses 2 (x > 0) and 3, the right one is cos or -sin."""
    if x > 0:
        return jnp.cos(x) if right else 2.0
    else:
        return -jnp.sin(x) if right else 3.0


def with_custom_jvp(right):
    f = jax.custom_jvp(sin_or_cos)
    f.defjvp(lambda primals, tangents: (f(primals[0]), slope(primals[0], right) * tangents[0]))
    return f


def with_custom_vjp(right):
    f = jax.custom_vjp(sin_or_cos)
    f.defvjp(lambda x: (f(x), x), lambda x, g: (slope(x, right) * g,))
    return f


@pytest.mark.parametrize("rule", [with_custom_jvp, with_custom_vjp])
def test_jax_python_control_flow_cases_are_judged_right(rule):
    right, wrong = rule(right=True), rule(right=False)
    for x in (2.0, -2.0):
        report = check_grads(right, x)
        assert report.ok, str(report)
        assert "f cannot be traced (TracerBoolConversionError" in str(report)
        report = check_grads(wrong, x)
        assert report.kind == "wrong gradient", str(report)
        assert report.autodiff == (2.0 if x > 0 else 3.0)


def test_order_2_is_refused_for_a_function_that_cannot_be_traced():
    with pytest.raises(ValueError, match="order=2 differences jax.grad.*got order=2"):
        check_grads(with_custom_vjp(right=True), 2.0, order=2)


def test_a_function_through_numpy_is_a_clear_error():
    def through_numpy(x):
        return jnp.sum(jnp.asarray(np.cos(np.asarray(x))))

    with pytest.raises(TypeError, match="f cannot be differentiated by JAX, even op by op"):
        check_grads(through_numpy, jnp.ones(3))
