"""Bad inputs across the public API and the CLI: each a clear TypeError/ValueError (exit status 2
and one line on stderr for the CLI) that names the argument and its value, never a crash, a raw
traceback from inside gdjax or JAX, or a silently wrong result.

Every error here fires before any compilation, so the table stays fast. The cases that crashed
the interpreter (a NumPy function as the objective) run in one subprocess.
"""

import json
import re
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gdjax
from gdjax import batch_study, cli, functions

X0 = jnp.ones(2)
X = jnp.ones((8, 2))  # fit's data: 8 samples of 2 features
LR = {"learning_rate": [0.1]}


def bowl(x):
    return jnp.sum(x**2)


def loss(params, batch):
    return jnp.mean((batch @ params) ** 2)


class Unhashable:
    """A callable object that cannot be hashed (a dataclass with eq=True, say)."""

    __hash__ = None

    def __call__(self, *args):
        return jnp.sum(args[0] ** 2)


def digits_like(n=40, features=4, classes=3, **changes):
    """A tiny stand-in for ``load_digits_split()``: (train, test) dicts of x and y."""
    rng = np.random.default_rng(0)
    part = {"x": rng.standard_normal((n, features)).astype(np.float32),
            "y": rng.integers(0, classes, n).astype(np.int32), **changes}
    return part, dict(part)


def write(path, text):
    path.write_text(text)
    return path


def case(call, error, match, *, id, xfail=None):
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(call, error, match, id=id, marks=marks)


# (call(tmp_path), expected exception type, a regex the message must match: the argument, its
# value and, where there is one, the fix)
API = [
    # --- the objective -----------------------------------------------------------------------
    case(lambda t: gdjax.minimize(3, X0), TypeError, r"f must be callable, got f=3", id="f-int"),
    case(lambda t: gdjax.minimize(lambda x: x, X0), ValueError,
         r"f must return a scalar, got output of shape \(2,\).*jnp.sum", id="f-vector"),
    case(lambda t: gdjax.minimize(lambda x: (jnp.sum(x), x), X0), TypeError,
         r"f must return a scalar.*got a tuple of 2 values.*loss alone", id="f-tuple"),
    case(lambda t: gdjax.minimize(lambda x: {"loss": jnp.sum(x)}, X0), TypeError,
         r"f must return a scalar.*got a dict with keys \['loss'\]", id="f-dict"),
    case(lambda t: gdjax.minimize(lambda x: None, X0), TypeError,
         r"f must return a scalar.*got None.*return", id="f-none"),
    case(lambda t: gdjax.minimize(lambda x: jnp.sum(x).astype(int), X0), TypeError,
         r"f must return a floating-point scalar, got dtype int", id="f-int-output"),
    case(lambda t: gdjax.minimize(lambda x, y: jnp.sum(x * y), X0), TypeError,
         r"f must take 1 positional argument \(x\), got f=.* with signature \(x, y\)",
         id="f-two-arguments"),
    case(lambda t: gdjax.numerical_gradient(lambda: 1.0, X0), TypeError,
         r"f must take 1 positional argument \(x\).*signature \(\)", id="fd-f-no-arguments"),
    # --- minimize ----------------------------------------------------------------------------
    case(lambda t: gdjax.minimize(bowl, jnp.arange(3)), TypeError,
         r"x0 must hold floating-point arrays.*int32.*astype\(float\)", id="x0-int"),
    case(lambda t: gdjax.minimize(bowl, jnp.zeros(0)), ValueError,
         r"x0 must not hold empty arrays", id="x0-empty-array"),
    case(lambda t: gdjax.minimize(bowl, {}), ValueError,
         r"x0 must contain at least one array, got x0=\{\}", id="x0-empty-dict"),
    case(lambda t: gdjax.minimize(bowl, "ab"), TypeError,
         r"x0 must hold floating-point arrays.*x0='ab'", id="x0-string"),
    case(lambda t: gdjax.minimize(bowl, X0, steps=0), ValueError,
         r"steps must be a positive integer, got steps=0", id="steps-0"),
    case(lambda t: gdjax.minimize(bowl, X0, steps=2.5), ValueError,
         r"steps must be a positive integer, got steps=2.5", id="steps-float"),
    case(lambda t: gdjax.minimize(bowl, X0, steps=True), ValueError,
         r"steps must be a positive integer, got steps=True", id="steps-bool"),
    case(lambda t: gdjax.minimize(bowl, X0, record_every=-1), ValueError,
         r"record_every must be a positive integer, got record_every=-1", id="record_every"),
    case(lambda t: gdjax.minimize(bowl, X0, record_params="yes"), TypeError,
         r"record_params must be True or False, got record_params='yes'", id="record_params"),
    case(lambda t: gdjax.minimize(bowl, X0, tol=-1e-3), ValueError,
         r"tol must be finite and >= 0, got tol=-0.001", id="tol-negative"),
    case(lambda t: gdjax.minimize(bowl, X0, tol="small"), TypeError,
         r"tol must be a real number or None, got tol='small'", id="tol-string"),
    case(lambda t: gdjax.minimize(bowl, X0, ftol=float("nan")), ValueError,
         r"ftol must be finite and >= 0, got ftol=nan", id="ftol-nan"),
    case(lambda t: gdjax.minimize(bowl, X0, grad="forward"), ValueError,
         r"grad must be one of \('autodiff', 'numerical'\), got grad='forward'", id="grad"),
    case(lambda t: gdjax.minimize(bowl, X0, "sgdd"), ValueError,
         r"unknown optimizer 'sgdd'; known optimizers: sgd, momentum", id="optimizer-name"),
    case(lambda t: gdjax.minimize(bowl, X0, 3), TypeError,
         r"optimizer must be a name or an optax.GradientTransformation, got optimizer=3",
         id="optimizer-int"),
    case(lambda t: gdjax.minimize(bowl, X0, "sgd", learning_rate=-0.1), ValueError,
         r"learning_rate must be positive, got learning_rate=-0.1", id="lr-negative"),
    case(lambda t: gdjax.minimize(bowl, X0, "sgd", learning_rate=float("inf")), ValueError,
         r"learning_rate must be finite, got learning_rate=inf", id="lr-inf"),
    case(lambda t: gdjax.minimize(bowl, X0, "sgd", learning_rate="0.1"), TypeError,
         r"learning_rate must be a number or an optax schedule \(step -> value\), got "
         r"learning_rate='0.1'",
         id="lr-string"),
    case(lambda t: gdjax.minimize(bowl, X0, "momentum", momentum=1.0), ValueError,
         r"momentum must be in \[0, 1\), got momentum=1.0", id="momentum-1"),
    case(lambda t: gdjax.minimize(bowl, X0, "adam", b2=-0.5), ValueError,
         r"b2 must be non-negative, got b2=-0.5", id="b2-negative"),
    case(lambda t: gdjax.minimize(bowl, X0, "sgd", momentum=0.9), ValueError,
         r"unknown hyperparameter\(s\) \['momentum'\] for optimizer 'sgd'", id="hp-unknown"),
    case(lambda t: gdjax.minimize(bowl, X0, optax.sgd(0.1), learning_rate=0.2), ValueError,
         r"learning_rate.*optax.inject_hyperparams", id="optax-not-injected"),
    # issue 15's silently wrong array hyperparameters: refused, or range-checked per coordinate
    case(lambda t: gdjax.minimize(bowl, X0, "sgd", learning_rate=jnp.array([0.1, -0.1])),
         ValueError, r"learning_rate.*-0\.1", id="lr-array-negative"),
    case(lambda t: gdjax.minimize(bowl, X0, "sgd", learning_rate=jnp.array([0.1, 0.1, 0.1])),
         ValueError, r"learning_rate.*\(3,\)", id="lr-array-wrong-length"),
    case(lambda t: gdjax.minimize(bowl, X0, "momentum", momentum=[0.5, 1.5]), ValueError,
         r"momentum.*1\.5", id="momentum-list"),
    # --- gradient_descent: the seed's argument names --------------------------------------------
    case(lambda t: gdjax.gradient_descent(bowl, X0, lr=-0.1), ValueError,
         r"^lr must be a positive finite number, got lr=-0.1", id="gd-lr-negative"),
    case(lambda t: gdjax.gradient_descent(bowl, X0, lr="big"), TypeError,
         r"^lr must be a positive number, got lr='big'", id="gd-lr-string"),
    case(lambda t: gdjax.gradient_descent(bowl, X0, step_num=0), ValueError,
         r"^step_num must be a positive integer, got step_num=0", id="gd-step_num-0"),
    case(lambda t: gdjax.gradient_descent(bowl, X0, grad="fd"), ValueError,
         r"grad must be one of \('autodiff', 'numerical'\), got grad='fd'", id="gd-grad"),
    # --- fit -----------------------------------------------------------------------------------
    case(lambda t: gdjax.fit(bowl, X0, X), TypeError,
         r"loss_fn must take 2 positional arguments \(params, batch\), got loss_fn=.*bowl"
         r".*signature \(x\)", id="fit-one-argument-loss"),
    case(lambda t: gdjax.fit(lambda p, b: b @ p, X0, X), ValueError,
         r"loss_fn must return a scalar, got output of shape \(8,\)", id="fit-loss-vector"),
    case(lambda t: gdjax.fit(loss, X0, {}), ValueError,
         r"data must contain at least one array, got data=\{\}", id="fit-data-empty"),
    case(lambda t: gdjax.fit(loss, X0, (X, jnp.ones(7))), ValueError,
         r"same leading \(sample\) size, got sizes \{'\[0\]': 8, '\[1\]': 7\}",
         id="fit-data-sizes"),
    case(lambda t: gdjax.fit(loss, X0, jnp.float32(1.0)), ValueError,
         r"every leaf of data needs a leading sample axis", id="fit-data-scalar"),
    case(lambda t: gdjax.fit(loss, X0, X, batch_size=0), ValueError,
         r"batch_size must be a positive integer, got batch_size=0", id="fit-batch_size-0"),
    case(lambda t: gdjax.fit(loss, X0, X, batch_size=9), ValueError,
         r"batch_size must be at most the number of samples \(8\), got batch_size=9",
         id="fit-batch_size-large"),
    case(lambda t: gdjax.fit(loss, X0, X, epochs=0), ValueError,
         r"epochs must be a positive integer, got epochs=0", id="fit-epochs"),
    case(lambda t: gdjax.fit(loss, X0, X, seed="a"), TypeError,
         r"seed must be a Python int.*got seed='a'", id="fit-seed-string"),
    case(lambda t: gdjax.fit(loss, X0, X, seed=1.5), TypeError,
         r"seed must be a Python int.*got seed=1.5", id="fit-seed-float"),
    case(lambda t: gdjax.fit(loss, X0, X, eval_fn=3), TypeError,
         r"eval_fn must be callable or None, got eval_fn=3", id="fit-eval_fn"),
    case(lambda t: gdjax.fit(loss, jnp.arange(2), X), TypeError,
         r"params must hold floating-point arrays", id="fit-params-int"),
    case(lambda t: gdjax.fit(loss, X0, X, learning_rate=0.0), ValueError,
         r"learning_rate must be positive, got learning_rate=0.0", id="fit-lr-0"),
    # --- sweep ---------------------------------------------------------------------------------
    case(lambda t: gdjax.sweep(bowl, X0, "sgd", grid=[0.1]), TypeError,
         r"grid must be a mapping of axis name -> values, got grid=\[0.1\]", id="sweep-grid-list"),
    case(lambda t: gdjax.sweep(bowl, X0, "sgd", grid={"lr": [0.1]}), ValueError,
         r"unknown grid axis 'lr'; valid axes here: learning_rate", id="sweep-axis-unknown"),
    case(lambda t: gdjax.sweep(bowl, X0, optax.sgd(0.1), grid=LR), ValueError,
         r"grid axis 'learning_rate'.*optax.inject_hyperparams", id="sweep-optax-not-injected"),
    case(lambda t: gdjax.sweep(bowl, X0, "sgd", grid={"learning_rate": []}), ValueError,
         r"grid axis 'learning_rate' is empty", id="sweep-axis-empty"),
    case(lambda t: gdjax.sweep(bowl, X0, "sgd", grid={"learning_rate": [0.1, -1.0]}), ValueError,
         r"learning_rate must be positive, got learning_rate=-1.0", id="sweep-lr-negative"),
    case(lambda t: gdjax.sweep(bowl, X0, "sgd", grid={"learning_rate": ["a"]}), TypeError,
         r"grid axis 'learning_rate' must hold numbers, got \['a'\]", id="sweep-lr-string"),
    case(lambda t: gdjax.sweep(bowl, X0, "sgd", grid=LR, learning_rate=0.1), ValueError,
         r"'learning_rate' is both a grid axis and a fixed hyperparameter", id="sweep-lr-twice"),
    case(lambda t: gdjax.sweep(bowl, X0, "sgd", grid={**LR, "momentum": [0.5]}), ValueError,
         r"unknown grid axis 'momentum'", id="sweep-axis-wrong-optimizer"),
    case(lambda t: gdjax.sweep(bowl, X0, "sgd", grid={"learning_rate": gdjax.Uniform(0.1, 0.2)}),
         ValueError, r"random axes \['learning_rate'\].*'seed' axis or pass samples=N",
         id="sweep-random-without-seed"),
    case(lambda t: gdjax.sweep(bowl, X0, "sgd", grid={"learning_rate": gdjax.LogUniform(0, 1),
                                                      "seed": [0, 1]}),
         ValueError, r"grid axis 'learning_rate': LogUniform needs low > 0", id="sweep-loguniform"),
    case(lambda t: gdjax.sweep(bowl, X0, "sgd", grid={"learning_rate": [0.1, 0.2], "seed": [0]},
                               zip_axes=[("learning_rate", "seed")]),
         ValueError, r"zipped axes must have equal lengths, got \{'learning_rate': 2, 'seed': 1\}",
         id="sweep-zip-lengths"),
    case(lambda t: gdjax.sweep(bowl, X0, "sgd", grid=LR, samples=0), ValueError,
         r"samples must be a positive integer, got samples=0", id="sweep-samples-0"),
    case(lambda t: gdjax.sweep(bowl, X0, "sgd", grid=LR, memory_budget=1), ValueError,
         r"memory_budget is a number of bytes.*got memory_budget=1 .*1 << 30",
         id="sweep-memory_budget-1"),
    case(lambda t: gdjax.sweep(bowl, X0, "sgd", grid=LR, memory_budget=0), ValueError,
         r"memory_budget must be a positive integer, got memory_budget=0",
         id="sweep-memory_budget-0"),
    case(lambda t: gdjax.sweep(bowl, X0, "sgd", grid=LR, chunk_size=0), ValueError,
         r"chunk_size must be a positive integer, got chunk_size=0", id="sweep-chunk_size"),
    case(lambda t: gdjax.sweep(bowl, X0, "sgd", grid=LR, checkpoint=write(t / "f.txt", "x")),
         ValueError, r"checkpoint='.*f\.txt' is an existing file, not a directory",
         id="sweep-checkpoint-file"),
    case(lambda t: gdjax.sweep(bowl, X0, "sgd", grid=LR, seed="a"), TypeError,
         r"seed must be an int, got seed='a'", id="sweep-seed"),
    case(lambda t: gdjax.sweep(loss, X0, "sgd", grid=LR, data=X, grad="numerical"), ValueError,
         r"fit-style sweeps \(with data\) use autodiff, got grad='numerical'",
         id="sweep-fit-numerical"),
    case(lambda t: gdjax.sweep(bowl, X0, "sgd", grid={**LR, "batch_size": [2]}), ValueError,
         r"unknown grid axis 'batch_size'", id="sweep-batch_size-without-data"),
    case(lambda t: gdjax.sweep(bowl, X0, "sgd", grid={"x0": jnp.ones((2, 3))}), ValueError,
         r"grid axis 'x0'", id="sweep-x0-shape"),
    case(lambda t: gdjax.sweep(bowl, X0, "sgd", grid=LR, compact="no"), TypeError,
         r"compact must be True, False or None, got compact='no'", id="sweep-compact"),
    case(lambda t: gdjax.sweep(bowl, X0, "sgd", grid=LR, eval_fn="acc"), TypeError,
         r"eval_fn must be callable or None, got eval_fn='acc'", id="sweep-eval_fn"),
    case(lambda t: gdjax.starts_grid([(0, 1), (0, 1)], 0), ValueError,
         r"n must be a positive integer, got n=0", id="starts_grid-n"),
    case(lambda t: gdjax.starts_grid([(1, 0)], 3), ValueError,
         r"domain must hold finite pairs with lo <= hi, got domain=\[\(1, 0\)\]",
         id="starts_grid-domain"),
    # --- gradients: finite differences and checks ---------------------------------------------
    case(lambda t: gdjax.numerical_gradient(bowl, X0, method="centered"), ValueError,
         r"method.*'centered'", id="fd-method"),
    case(lambda t: gdjax.numerical_gradient(bowl, X0, step=-1e-3), ValueError,
         r"step.*-0.001", id="fd-step"),
    case(lambda t: gdjax.numerical_gradient(bowl, jnp.arange(2)), TypeError,
         r"x must hold floating-point arrays", id="fd-x-int"),
    case(lambda t: gdjax.directional_derivative(bowl, X0, jnp.ones(3)), ValueError,
         r"v", id="dd-v-shape"),
    case(lambda t: gdjax.check_grads(lambda x: x, X0), ValueError,
         r"f must return a scalar, got output of shape \(2,\)", id="check-f-vector"),
    case(lambda t: gdjax.check_grads(bowl, X0, rtol=-1.0), ValueError,
         r"rtol must be finite and >= 0, got rtol=-1.0", id="check-rtol"),
    case(lambda t: gdjax.check_grads(bowl, X0, seed="a"), TypeError,
         r"seed must be an integer, got seed='a'", id="check-seed"),
    case(lambda t: gdjax.assert_grads_close(bowl, X0, fd_dtype="float16"), ValueError,
         r"fd_dtype must be 'float32' or 'float64', got fd_dtype='float16'", id="assert-fd_dtype"),
    # --- optimizer -----------------------------------------------------------------------------
    case(lambda t: gdjax.optimizer("bogus"), ValueError,
         r"unknown optimizer 'bogus'; known optimizers", id="optimizer-unknown"),
    case(lambda t: gdjax.optimizer("adam", b1=1.0), ValueError,
         r"b1 must be in \[0, 1\), got b1=1.0", id="optimizer-b1"),
    case(lambda t: gdjax.optimizer("adam", eps=0.0), ValueError,
         r"eps must be positive, got eps=0.0", id="optimizer-eps"),
    case(lambda t: gdjax.optimizer("sgd", momentum=0.9), ValueError,
         r"unknown hyperparameter\(s\) \['momentum'\] for optimizer 'sgd'; it has "
         r"\['learning_rate'\]", id="optimizer-unknown-hyperparameter"),
    case(lambda t: gdjax.optimizer("sgd", nesterov=True), TypeError,
         r"nesterov must be a number or an optax schedule.*got nesterov=True",
         id="optimizer-flag"),
    case(lambda t: gdjax.minimize(bowl, X0, "adam", b1=np.array(["0.9"])), TypeError,
         r"b1 must be a number or an optax schedule.*got b1=array\(\['0.9'\].*dtype <U3",
         id="b1-string-array"),
    case(lambda t: gdjax.hyperparameters("SGD"), ValueError,
         r"unknown optimizer 'SGD'", id="hyperparameters-unknown"),
    # --- sharpness -----------------------------------------------------------------------------
    case(lambda t: gdjax.hessian_top_eigenvalue(bowl, X0, seed="a"), TypeError,
         r"seed.*'a'", id="eigen-seed-string",),
    case(lambda t: gdjax.epsilon_sharpness(bowl, X0, 1e-3, seed=1.5), TypeError,
         r"seed.*1\.5", id="sharpness-seed-float",),
    case(lambda t: gdjax.hutchinson_trace(bowl, X0, seed="a"), TypeError,
         r"seed.*'a'", id="trace-seed-string",),
    case(lambda t: gdjax.epsilon_sharpness(bowl, X0, -1e-3), ValueError,
         r"epsilon must be positive, got epsilon=-0.001", id="sharpness-epsilon"),
    case(lambda t: gdjax.hessian_top_eigenvalue(bowl, X0, num_iters=0), ValueError,
         r"num_iters must be a positive integer, got num_iters=0", id="eigen-num_iters"),
    case(lambda t: gdjax.interpolate(bowl, X0, X0, ["a"]), TypeError,
         r"alphas.*'a'", id="interpolate-alphas-string",),
    case(lambda t: gdjax.interpolate(bowl, X0, jnp.ones(3)), ValueError,
         r"x_b must have the structure and shapes of x_a", id="interpolate-x_b"),
    case(lambda t: gdjax.interpolate(bowl, X0, X0, jnp.ones((2, 2))), ValueError,
         r"alphas must be a 1-D array, got alphas with shape \(2, 2\)", id="interpolate-2d"),
    case(lambda t: gdjax.hvp(bowl, X0, jnp.ones(3)), ValueError,
         r"v", id="hvp-v-shape"),
    # --- test functions ------------------------------------------------------------------------
    case(lambda t: functions.get("rosenbrok"), ValueError, r"rosenbrok", id="functions-get"),
    case(lambda t: functions.himmelblau(jnp.ones(3)), ValueError, r"himmelblau.*3",
         id="functions-dim"),
    case(lambda t: functions.rosenbrock(jnp.float32(1.0)), ValueError,
         r"rosenbrock: x must have a coordinate axis, got a scalar x=1.0", id="functions-scalar"),
    case(lambda t: functions.himmelblau.in_dim(3), ValueError,
         r"himmelblau is defined in 2 dimensions only, got n=3", id="functions-in_dim"),
    # --- results files (gdjax.load) --------------------------------------------------------------
    case(lambda t: gdjax.load(t / "sweep.txt"), ValueError,
         r"path must end in .json or .csv, got path='.*sweep.txt' \(or in .npz",
         id="load-extension"),
    case(lambda t: gdjax.load(t / "missing.json"), FileNotFoundError, r"missing\.json",
         id="load-missing"),
    case(lambda t: gdjax.load(write(t / "empty.json", "")), ValueError, r"empty\.json",
         id="load-empty-json"),
    case(lambda t: gdjax.load(write(t / "cut.json", '{"configs": 3, "grid": {"learning_r')),
         ValueError, r"cut\.json", id="load-truncated-json"),
    case(lambda t: gdjax.load(write(t / "other.json", '{"configs": 3}')), ValueError,
         r"'.*other\.json' is not a gdjax sweep JSON file", id="load-foreign-json"),
    case(lambda t: gdjax.load(write(t / "empty.csv", "")), ValueError, r"empty\.csv",
         id="load-empty-csv"),
    # --- batch_size_study: checked before loading or training anything ---------------------------
    case(lambda t: batch_study.batch_size_study(data=digits_like()[:1]), ValueError,
         r"data must be a \(train, test\) pair", id="study-data-single"),
    case(lambda t: batch_study.batch_size_study(data=({"a": X}, {"a": X})), ValueError,
         r"data\[0\] must be a dict with keys 'x' and 'y'.*\['a'\]", id="study-data-keys"),
    case(lambda t: batch_study.batch_size_study(
            data=digits_like(y=np.zeros(39, np.int32))), ValueError,
         r"data\[0\]\['x'\] and data\[0\]\['y'\] must have the same number of samples.*40.*39",
         id="study-data-lengths"),
    case(lambda t: batch_study.batch_size_study(
            data=digits_like(y=np.zeros(40, np.float32))), TypeError,
         r"data\[0\]\['y'\] must hold integer class labels.*float32", id="study-labels-float"),
    case(lambda t: batch_study.batch_size_study(small=8, large=64, data=digits_like()), ValueError,
         r"large must be at most the training set size 40, got large=64", id="study-large"),
    case(lambda t: batch_study.batch_size_study(small=64, large=32), ValueError,
         r"small must be below large, got small=64, large=32", id="study-small-large"),
    case(lambda t: batch_study.batch_size_study(seeds=()), ValueError,
         r"seeds must not be empty", id="study-seeds-empty"),
    case(lambda t: batch_study.batch_size_study(seeds=["a"]), TypeError,
         r"seeds must hold integers, got seeds=\['a'\]", id="study-seeds-string"),
    case(lambda t: batch_study.batch_size_study(epsilons=[1e-3, -1.0]), ValueError,
         r"epsilons must be positive, got -1.0 in epsilons=\[0.001, -1.0\]", id="study-epsilons"),
    case(lambda t: batch_study.batch_size_study(learning_rate=-1e-3), ValueError,
         r"learning_rate must be a positive finite number, got learning_rate=-0.001",
         id="study-lr"),
    case(lambda t: batch_study.batch_size_study(hidden=[0]), ValueError,
         r"hidden must hold positive layer widths, got hidden=\[0\]", id="study-hidden"),
]


@pytest.mark.parametrize(("call", "error", "match"), API)
def test_api_refuses_bad_input(call, error, match, tmp_path):
    with pytest.raises(error, match=match):
        call(tmp_path)


# (the command line after ``gdjax``, a regex its one-line error must match)
CLI = [
    (["sweep", "--lr", "-1"], r"argument --lr: expected LO:HI:N.*got '-1'"),
    (["sweep", "--lr", "1e-1:1e-3:4"], r"argument --lr: .*got '1e-1:1e-3:4'"),
    (["sweep", "--steps", "0"], r"argument --steps: expected a positive integer, got '0'"),
    (["sweep", "--starts", "x"], r"argument --starts: expected a positive integer, got 'x'"),
    (["sweep", "--tol", "small"], r"argument --tol: invalid float value: 'small'"),
    (["sweep", "rosenbrok"], r"unknown function 'rosenbrok': give a built-in \(.*rosenbrock"),
    (["sweep", "--optimizer", "sgdd"], r"unknown optimizer 'sgdd'; known optimizers"),
    (["sweep", "--hp", "momentum"], r"--hp expects NAME=VALUE with a number, got 'momentum'"),
    (["sweep", "--hp", "momentum=0.9"], r"unknown hyperparameter\(s\) \['momentum'\]"),
    (["sweep", "--optimizer", "momentum", "--hp", "momentum=1.5"],
     r"momentum must be in \[0, 1\), got momentum=1.5"),
    (["sweep", "--x0", "1,2", "--starts", "3"], r"--x0 is one start, but --starts 3"),
    (["sweep", "--x0", "1,a"], r"argument --x0: expected comma-separated numbers.*'1,a'"),
    (["sweep", "--box", "1:0"], r"argument --box: expected LO:HI with LO < HI, got '1:0'"),
    (["sweep", "--dim", "0"], r"argument --dim: expected a positive integer, got '0'"),
    (["sweep", "himmelblau", "--dim", "3"], r"himmelblau is defined in 2 dimensions only"),
    (["sweep", "no_such_module_xyz:f"], r"cannot import module 'no_such_module_xyz'"),
    (["sweep", "math:pi"], r"'math:pi' is not callable, it is a float"),
    (["sweep", "jax.numpy:sum"], r"has no suggested start: give --x0 X1,X2,... or --dim N"),
    (["check", "numpy", "--shape", "3"], r"expected module:function, got 'numpy'"),
    (["check", "math:nope", "--shape", "3"], r"module 'math' has no 'nope'"),
    (["check", "jax.numpy:sum"], r"one of the arguments --shape --point is required"),
    (["check", "jax.numpy:sum", "--shape", "0"], r"argument --shape: expected a shape.*'0'"),
    (["check", "jax.numpy:sin", "--shape", "3"],
     r"jax.numpy:sin failed at .*: ValueError: f must return a scalar, got output of shape"),
    (["check", "jax.numpy:sum", "--point", "missing.npy"], r"cannot read --point 'missing.npy'"),
    (["check", "jax.numpy:sum", "--shape", "3", "--dtype", "float16"],
     r"argument --dtype: invalid choice: 'float16'"),
    (["check", "jax.numpy:sum", "--shape", "3", "--order", "3"],
     r"argument --order: invalid choice: 3"),
    (["check", "jax.numpy:sum", "--shape", "3", "--rtol", "-1"],
     r"rtol must be finite and >= 0, got rtol=-1.0"),
    (["race", "--optimizers", "sgd,bogus"], r"--optimizers must name some of .*'sgd,bogus'"),
    (["race", "--lr", "-0.1"], r"--lr must be 'auto' or a positive number, got '-0.1'"),
    (["race", "--steps", "-5"], r"argument --steps: expected a positive integer, got '-5'"),
    (["demo", "--bogus"], r"unrecognized arguments: --bogus"),
    (["bogus"], r"invalid choice: 'bogus'"),
]


@pytest.mark.parametrize(("argv", "match"), [pytest.param(a, m, id=" ".join(a)) for a, m in CLI])
def test_cli_refuses_bad_input(argv, match, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own errors exit from inside parse_args
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2
    assert err.endswith("\n") and err.count("\n") == 1, err  # one line, no traceback or usage
    assert err.startswith("gdjax") and "error: " in err, err
    assert re.search(match, err), err


# (call, its final loss): SGD on |x|^2 from ones scales x by (1 - 2 lr) a step
ACCEPTED = [
    # an unhashable callable object is accepted, as numerical_gradient and check_grads are
    pytest.param(lambda: gdjax.minimize(Unhashable(), X0, "sgd", steps=2).loss,
                 2 * 0.98**4, id="minimize"),
    pytest.param(lambda: gdjax.fit(Unhashable(), X0, X, epochs=1).loss,  # one full batch
                 2 * 0.98**2, id="fit"),
    pytest.param(lambda: gdjax.sweep(Unhashable(), X0, "sgd", grid=LR, steps=2).loss[0],
                 2 * 0.8**4, id="sweep"),
    # a function that returns a Python number: a constant, zero gradient
    pytest.param(lambda: gdjax.minimize(lambda x: 1.0, X0, "sgd", steps=2).loss, 1.0,
                 id="constant"),
]


@pytest.mark.parametrize(("call", "loss"), ACCEPTED)
def test_accepted_without_a_traceback(call, loss):
    assert float(call()) == pytest.approx(loss, rel=1e-6)


CRASHES = textwrap.dedent("""
    import contextlib, io, json, numpy as np, jax.numpy as jnp, gdjax
    from gdjax import cli
    x = jnp.ones(2)

    class Slotted:
        __slots__ = ()

        def __call__(self, x):
            return jnp.sum(x**2)

    cases = {
        "minimize np.sum": lambda: gdjax.minimize(np.sum, x, "sgd", steps=3),
        "minimize np.mean": lambda: gdjax.minimize(np.mean, x, "sgd", steps=3),
        "minimize np.sin": lambda: gdjax.minimize(np.sin, x, "sgd", steps=3),
        "sweep np.sum": lambda: gdjax.sweep(np.sum, x, "sgd", grid={"learning_rate": [0.1]}),
        "numerical_gradient np.sum": lambda: gdjax.numerical_gradient(np.sum, x),
        "check_grads np.sum": lambda: gdjax.check_grads(np.sum, x),
        "fit np.dot": lambda: gdjax.fit(np.dot, x, jnp.ones((4, 2))),
        "hessian np.sum": lambda: gdjax.hessian_top_eigenvalue(np.sum, x),
        # a callable object without a weak reference (its class has __slots__), as np.sum has
        # none: accepted
        "minimize slotted": lambda: gdjax.minimize(Slotted(), x, "sgd", steps=3),
        "numerical_gradient slotted": lambda: gdjax.numerical_gradient(Slotted(), x),
    }
    for name, call in cases.items():
        try:
            call()
            print(json.dumps([name, None, ""]), flush=True)
        except Exception as e:
            print(json.dumps([name, type(e).__name__, str(e)]), flush=True)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["check", "numpy:sum", "--shape", "3"])
    print(json.dumps(["gdjax check numpy:sum", code, err.getvalue()]), flush=True)
""")


def test_numpy_objective_is_a_clear_error_not_a_crash():
    """A NumPy function as the objective segfaulted (jax.eval_shape retried on a callable that
    takes no weak reference); in a subprocess, so a crash fails this test, not the session."""
    proc = subprocess.run([sys.executable, "-c", CRASHES], capture_output=True, text=True,
                          timeout=120)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0 and len(results) == 11, (proc.returncode, proc.stderr[-2000:])
    *numpy, slotted, slotted_fd, command = results
    assert slotted[1:] == slotted_fd[1:] == [None, ""], (slotted, slotted_fd)
    for name, kind, message in numpy:
        arg = "loss_fn" if name.startswith("fit") else "f"
        assert kind == "TypeError", (name, kind, message)
        assert f"{arg}=numpy." in message and "use jax.numpy" in message, (name, message)
    name, code, err = command
    assert code == 2 and err.count("\n") == 1 and "f=numpy.sum" in err, (name, code, err)
