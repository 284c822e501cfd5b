"""The batch-size study: plumbing checked against independent runs (tiny sizes, not the claim)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdjax import batch_study
from gdjax.batching import fit

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def study():
    train, test = batch_study.load_digits_split()
    train = {k: v[:400] for k, v in train.items()}
    return batch_study.batch_size_study(
        small=16, large=128, seeds=(0, 1), epochs=3, hidden=(8,), eigen_iters=20,
        ascent_steps=3, alphas=[0.0, 0.5, 1.0], data=(train, test), scale_lr=True,
    ), train, test


def test_rows_cover_every_batch_size_and_seed(study):
    res, _, _ = study
    assert [(r["batch_size"], r["seed"]) for r in res.rows] == [(16, 0), (16, 1), (128, 0),
                                                                (128, 1)]
    for r in res.rows:
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["test_acc"] <= 1
        assert r["sharpness_0.001"] >= 0 and r["sharpness_0.0005"] >= 0
        assert np.isfinite(r["top_eigenvalue"])
    summary = res.summary()
    assert [s["batch_size"] for s in summary] == [16, 128]
    assert summary[0]["test_acc"] == pytest.approx(
        np.mean([r["test_acc"] for r in res.rows[:2]]))


def test_a_config_equals_fit_run_alone(study):
    res, train, test = study
    sizes = [64, 8, 10]
    init = batch_study.init_mlp(jax.random.key(1), sizes)
    alone = fit(batch_study.cross_entropy, init, train, optimizer="adam", learning_rate=8e-3,
                batch_size=128, epochs=3, seed=1)
    test_j = jax.tree.map(jnp.asarray, test)
    acc = float(batch_study.accuracy(alone.params, test_j))
    assert res.rows[3]["test_acc"] == pytest.approx(acc, abs=1e-6)
    assert res.rows[3]["train_loss"] == pytest.approx(float(alone.loss), rel=1e-5)


def test_interpolation_ends_at_the_two_solutions(study):
    res, _, _ = study
    # alpha = 0 is the small-batch solution of seed 0 (row 0), alpha = 1 the large one (row 2)
    assert res.line_train_loss[0] == pytest.approx(res.rows[0]["train_loss"], rel=1e-5)
    assert res.line_train_loss[2] == pytest.approx(res.rows[2]["train_loss"], rel=1e-5)
    assert res.line_test_loss[0] == pytest.approx(res.rows[0]["test_loss"], rel=1e-5)


def test_linear_scaling_rule_sets_the_large_batch_rate(study):
    res, _, _ = study
    assert [r["learning_rate"] for r in res.rows] == pytest.approx([1e-3, 1e-3, 8e-3, 8e-3])
    assert "linear scaling" in res.note


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(small=64, large=32), "small must be below large"),
        (dict(small=0), "small must be a positive integer, got small=0"),
        (dict(epochs=0), "epochs must be a positive integer"),
        (dict(seeds=()), "seeds must not be empty"),
        (dict(epsilons=(1e-3, -1.0)), "epsilons must be positive, got -1.0"),
        (dict(large=100000), "large must be at most the training set size"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        batch_study.batch_size_study(**kwargs)
