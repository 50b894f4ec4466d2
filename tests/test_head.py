"""Tests for headstart.head: the numpy softmax head, on real data (scikit-learn's digits)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from headstart.errors import ModelError
from headstart.head import NotFittedError, SoftmaxHead, TrainStep
from headstart.head_math import _ClassBalancedSampler, _log_softmax, _loss_and_grads, _truncated_normal
from headstart.head_state import HeadStateError


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, ...]:
    """Digits scaled to [0, 1] (bottleneck-like magnitudes): train / validation / test."""
    data = load_digits()
    X = (data.data / 16.0).astype(np.float32)
    y = data.target
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    X_train, X_val, y_train, y_val = train_test_split(X_train, y_train, test_size=0.2, random_state=0,
                                                      stratify=y_train)
    return X_train, y_train, X_val, y_val, X_test, y_test


@pytest.fixture(scope="module")
def recipe_head(digits) -> tuple[SoftmaxHead, list[TrainStep]]:
    """retrain.py's defaults, fitted once with a validation set and a callback."""
    X_train, y_train, X_val, y_val, _, _ = digits
    seen: list[TrainStep] = []
    head = SoftmaxHead().fit(X_train, y_train, X_val, y_val, callback=seen.append)
    return head, seen


def accuracy(head: SoftmaxHead, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(head.predict(X) == y))


# ---------------------------------------------------------------------- learning
def test_retrain_recipe_defaults_are_retrain_py() -> None:
    params = SoftmaxHead().get_params()
    assert params["optimizer"] == "sgd"
    assert params["learning_rate"] == 0.01
    assert params["train_batch_size"] == 100
    assert params["how_many_training_steps"] == 4000
    assert params["eval_step_interval"] == 10
    assert params["validation_batch_size"] == 100
    assert params["hidden_units"] == 0 and params["standardize"] is False


def test_retrain_recipe_learns_digits(recipe_head, digits) -> None:
    head, _ = recipe_head
    *_, X_test, y_test = digits
    assert accuracy(head, X_test, y_test) > 0.9
    assert not head.diverged_
    assert head.n_steps_run_ == 4000
    assert head.fit_seconds_ > 0


def test_retrain_recipe_history_follows_retrain_py(recipe_head) -> None:
    head, seen = recipe_head
    steps = [row.step for row in head.history_]
    # retrain.py logs when i % eval_step_interval == 0, plus the last step (i = 3999).
    assert len(head.history_) == 4000 // 10 + 1
    assert steps == list(range(0, 4000, 10)) + [3999]
    assert seen == head.history_, "the callback sees every logged row, in order"
    for row in head.history_:
        assert 0.0 <= row.train_accuracy <= 1.0 and row.cross_entropy >= 0
        assert row.validation_accuracy is not None and row.validation_cross_entropy is not None
        assert math.isfinite(row.cross_entropy) and math.isfinite(row.validation_cross_entropy)
    first, last = head.history_[0], head.history_[-1]
    assert first.cross_entropy == pytest.approx(math.log(10), abs=0.05), "tiny init: uniform softmax"
    assert last.cross_entropy < first.cross_entropy / 2
    assert last.validation_accuracy > 0.85


def test_history_length_counts_last_step_once() -> None:
    X, y = _two_blobs()
    assert len(SoftmaxHead(how_many_training_steps=25, eval_step_interval=10).fit(X, y).history_) == 4
    # When the last step is itself an eval step it is logged once (0, 10, 20).
    head = SoftmaxHead(how_many_training_steps=21, eval_step_interval=10).fit(X, y)
    assert [r.step for r in head.history_] == [0, 10, 20]


def test_history_without_validation_has_none(digits) -> None:
    X_train, y_train, *_ = digits
    head = SoftmaxHead(how_many_training_steps=30).fit(X_train, y_train)
    assert all(r.validation_accuracy is None and r.validation_cross_entropy is None
               for r in head.history_)


@pytest.mark.parametrize("optimizer, learning_rate, steps", [("adam", 0.01, 1000), ("momentum", 0.01, 2000)])
def test_other_optimizers_learn_digits(digits, optimizer, learning_rate, steps) -> None:
    X_train, y_train, _, _, X_test, y_test = digits
    head = SoftmaxHead(optimizer=optimizer, learning_rate=learning_rate,
                       how_many_training_steps=steps).fit(X_train, y_train)
    assert accuracy(head, X_test, y_test) > 0.9


def test_hidden_layer_with_dropout_learns_digits(digits) -> None:
    X_train, y_train, _, _, X_test, y_test = digits
    head = SoftmaxHead(hidden_units=64, dropout=0.3, optimizer="adam", learning_rate=0.003,
                       how_many_training_steps=1000, weight_decay=1e-4).fit(X_train, y_train)
    assert set(head.weights_) == {"hidden.weight", "hidden.bias", "final.weight", "final.bias"}
    assert head.weights_["hidden.weight"].shape == (64, 64)
    assert accuracy(head, X_test, y_test) > 0.9


def test_standardize_learns_raw_features_and_stores_them(digits) -> None:
    X_train, y_train, _, _, X_test, y_test = digits
    raw_train, raw_test = X_train * 16.0, X_test * 16.0  # original 0..16 pixel counts
    head = SoftmaxHead(standardize=True, optimizer="adam",
                       how_many_training_steps=1000).fit(raw_train, y_train)
    assert accuracy(head, raw_test, y_test) > 0.9
    np.testing.assert_allclose(head.feature_mean_, raw_train.mean(axis=0), rtol=1e-5, atol=1e-5)
    assert (head.feature_std_ > 0).all(), "constant pixels get std 1, not 0"
    tensors, config = head.to_state()
    assert config["standardize"] is True
    assert tensors["standardize.mean"].shape == tensors["standardize.std"].shape == (64,)


def test_dropout_without_hidden_layer_drops_bottleneck_features(digits) -> None:
    X_train, y_train, _, _, X_test, y_test = digits
    kw = dict(optimizer="adam", how_many_training_steps=300)
    plain = SoftmaxHead(**kw).fit(X_train, y_train)
    dropped = SoftmaxHead(dropout=0.5, **kw).fit(X_train, y_train)
    assert not np.array_equal(plain.weights_["final.weight"], dropped.weights_["final.weight"])
    assert accuracy(dropped, X_test, y_test) > 0.9


def test_weight_decay_shrinks_weights(digits) -> None:
    X_train, y_train, *_ = digits
    kw = dict(optimizer="adam", how_many_training_steps=500)
    plain = SoftmaxHead(**kw).fit(X_train, y_train)
    decayed = SoftmaxHead(weight_decay=0.1, **kw).fit(X_train, y_train)
    assert (np.linalg.norm(decayed.weights_["final.weight"])
            < 0.5 * np.linalg.norm(plain.weights_["final.weight"]))


def test_full_batch_uses_every_example(digits) -> None:
    X_train, y_train, _, _, X_test, y_test = digits
    head = SoftmaxHead(train_batch_size=-1, optimizer="adam", how_many_training_steps=300)
    head.fit(X_train, y_train)
    assert accuracy(head, X_test, y_test) > 0.9
    # The last row is measured after the final update on the batch = the whole training set.
    assert head.history_[-1].train_accuracy == pytest.approx(accuracy(head, X_train, y_train))


def test_n_classes_larger_than_labels_present(digits) -> None:
    X_train, y_train, *_ = digits
    head = SoftmaxHead(n_classes=12, how_many_training_steps=50).fit(X_train, y_train)
    np.testing.assert_array_equal(head.classes_, np.arange(12))
    assert head.predict_proba(X_train[:5]).shape == (5, 12)


# ---------------------------------------------------------------------- validation set
def test_whole_validation_set_when_batch_size_is_minus_one(digits) -> None:
    X_train, y_train, X_val, y_val, _, _ = digits
    head = SoftmaxHead(validation_batch_size=-1, how_many_training_steps=200).fit(
        X_train, y_train, X_val, y_val)
    last = head.history_[-1]  # evaluated with the final weights
    assert last.validation_accuracy == pytest.approx(accuracy(head, X_val, y_val))
    proba = head.predict_proba(X_val)
    log_loss = -np.mean(np.log(proba[np.arange(len(y_val)), y_val]))
    assert last.validation_cross_entropy == pytest.approx(log_loss, rel=1e-4)


def test_validation_sample_of_given_size(digits) -> None:
    X_train, y_train, X_val, y_val, _, _ = digits
    head = SoftmaxHead(validation_batch_size=7, how_many_training_steps=400).fit(
        X_train, y_train, X_val, y_val)
    values = [r.validation_accuracy for r in head.history_]
    # Each value is a count out of 7 sampled examples, and the samples differ.
    assert all(abs(v * 7 - round(v * 7)) < 1e-6 for v in values)
    assert len(set(values[-20:])) > 1


def test_watching_validation_never_changes_training(digits) -> None:
    X_train, y_train, X_val, y_val, _, _ = digits
    kw = dict(how_many_training_steps=200, seed=3)
    alone = SoftmaxHead(**kw).fit(X_train, y_train)
    watched = SoftmaxHead(**kw).fit(X_train, y_train, X_val, y_val)
    for name in alone.weights_:
        np.testing.assert_array_equal(alone.weights_[name], watched.weights_[name])


# ---------------------------------------------------------------------- reproducibility
def test_same_seed_same_weights_other_seed_other_weights(digits) -> None:
    X_train, y_train, *_ = digits
    kw = dict(hidden_units=16, dropout=0.2, optimizer="adam", how_many_training_steps=100)
    a = SoftmaxHead(seed=1, **kw).fit(X_train, y_train)
    b = SoftmaxHead(seed=1, **kw).fit(X_train, y_train)
    c = SoftmaxHead(seed=2, **kw).fit(X_train, y_train)
    for name in a.weights_:
        np.testing.assert_array_equal(a.weights_[name], b.weights_[name])
    assert a.history_ == b.history_
    assert not np.array_equal(a.weights_["final.weight"], c.weights_["final.weight"])


def test_sklearn_clone_and_params() -> None:
    from sklearn.base import clone

    head = SoftmaxHead(hidden_units=8, learning_rate=0.1)
    copy = clone(head)
    assert copy.get_params() == head.get_params()
    assert copy.set_params(seed=5) is copy and copy.seed == 5
    with pytest.raises(ValueError, match="invalid parameter"):
        copy.set_params(lr=1)
    assert "hidden_units=8" in repr(head)


# ---------------------------------------------------------------------- the math
def _numeric_grads(w, X, y, weight_decay, keep, eps=1e-6):
    def objective(weights):
        loss, _ = _loss_and_grads(weights, X, y, weight_decay, keep)
        penalty = sum(np.sum(v ** 2) for k, v in weights.items() if k.endswith(".weight"))
        return loss + 0.5 * weight_decay * penalty

    grads = {}
    for name, value in w.items():
        g = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            orig = value[i]
            value[i] = orig + eps
            up = objective(w)
            value[i] = orig - eps
            down = objective(w)
            value[i] = orig
            g[i] = (up - down) / (2 * eps)
        grads[name] = g
    return grads


@pytest.mark.parametrize("hidden, weight_decay, dropout", [
    (0, 0.0, 0.0), (0, 0.3, 0.0), (4, 0.0, 0.0), (4, 0.1, 0.0), (4, 0.0, 0.5), (0, 0.0, 0.5)])
def test_backward_pass_matches_finite_differences(hidden, weight_decay, dropout) -> None:
    rng = np.random.default_rng(0)
    n, f, c = 7, 5, 3
    X = rng.standard_normal((n, f))
    y = rng.integers(0, c, n)
    w = {}
    if hidden:
        w["hidden.weight"] = rng.standard_normal((f, hidden))
        w["hidden.bias"] = rng.standard_normal(hidden) * 0.1
    w["final.weight"] = rng.standard_normal((hidden or f, c))
    w["final.bias"] = rng.standard_normal(c) * 0.1
    keep = None
    if dropout:
        keep = (rng.random((n, hidden or f)) >= dropout) / (1 - dropout)  # a fixed inverted-dropout mask
    _, analytic = _loss_and_grads(w, X, y, weight_decay, keep)
    numeric = _numeric_grads(w, X, y, weight_decay, keep)
    assert set(analytic) == set(w)
    for name in w:
        assert analytic[name].dtype == np.float64
        np.testing.assert_allclose(analytic[name], numeric[name], rtol=1e-5, atol=1e-8, err_msg=name)


def test_loss_is_mean_softmax_cross_entropy() -> None:
    X = np.array([[1.0, 0.0], [0.0, 1.0]])
    w = {"final.weight": np.array([[2.0, 0.0], [0.0, 1.0]]), "final.bias": np.zeros(2)}
    loss, _ = _loss_and_grads(w, X, np.array([0, 0]))
    expected = np.mean([-np.log(np.exp(2) / (np.exp(2) + 1)), -np.log(1 / (1 + np.e))])
    assert loss == pytest.approx(expected)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float32, (3, 4), elements=st.floats(width=32, allow_nan=False, allow_infinity=False)))
def test_softmax_is_stable_for_extreme_logits(z) -> None:
    p = np.exp(_log_softmax(z))
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


def test_truncated_normal_like_tensorflow() -> None:
    x = _truncated_normal(np.random.default_rng(0), (200, 100), 0.001)
    assert x.dtype == np.float32
    assert np.abs(x).max() <= 0.002
    assert x.std() == pytest.approx(0.001 * 0.8796, rel=0.03)  # std of N(0,1) cut at ±2


def test_batches_are_class_balanced_like_retrain_py() -> None:
    y = np.array([0] * 900 + [1] * 90 + [2] * 10)
    idx = _ClassBalancedSampler(y).sample(np.random.default_rng(0), 30000)
    share = np.bincount(y[idx], minlength=3) / len(idx)
    np.testing.assert_allclose(share, [1 / 3] * 3, atol=0.02)
    assert len(np.unique(idx[y[idx] == 2])) == 10, "drawn with replacement from every example"


# ---------------------------------------------------------------------- divergence
@pytest.mark.parametrize("kw", [
    dict(learning_rate=1e37),                        # weights overflow float32 at the first update
    dict(optimizer="adam", learning_rate=1e36),
    dict(hidden_units=32, learning_rate=1e10),       # a ReLU layer multiplies the blow-up
])
def test_divergence_stops_training_and_keeps_a_usable_model(digits, kw) -> None:
    X_train, y_train, X_val, y_val, X_test, _ = digits
    seen: list[TrainStep] = []
    head = SoftmaxHead(how_many_training_steps=500, **kw).fit(X_train * 16, y_train, X_val * 16, y_val,
                                                              callback=seen.append)
    assert head.diverged_
    assert head.n_steps_run_ < 500
    last = head.history_[-1]
    assert math.isnan(last.cross_entropy) and last.step == head.n_steps_run_ - 1
    assert seen[-1] is last
    assert all(np.isfinite(v).all() for v in head.weights_.values())
    proba = head.predict_proba(X_train[:50] * 16)
    assert np.isfinite(proba).all()
    tensors, config = head.to_state()
    assert config["diverged"] is True
    SoftmaxHead.from_state(tensors, config)


@pytest.mark.parametrize("kw", [dict(optimizer="adam", learning_rate=1.0), dict(learning_rate=100.0)])
def test_large_finite_learning_rates_stay_finite(digits, kw) -> None:
    """The stable softmax has bounded gradients: a softmax layer's weights grow at most
    linearly, so rates like these give a poor model with a finite loss, not divergence."""
    X_train, y_train, *_ = digits
    head = SoftmaxHead(how_many_training_steps=300, **kw).fit(X_train * 16, y_train)
    assert not head.diverged_
    assert all(math.isfinite(r.cross_entropy) for r in head.history_)
    assert np.isfinite(head.predict_proba(X_train * 16)).all()


# ---------------------------------------------------------------------- inference
def test_predict_proba_contract(recipe_head, digits) -> None:
    head, _ = recipe_head
    *_, X_test, _ = digits
    proba = head.predict_proba(X_test)
    assert proba.dtype == np.float32 and proba.shape == (len(X_test), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(head.predict(X_test), head.classes_[proba.argmax(axis=1)])
    np.testing.assert_array_equal(head.predict(X_test), head.logits(X_test).argmax(axis=1))
    assert head.logits(X_test).dtype == np.float32
    assert head.predict_proba(X_test[:0]).shape == (0, 10)
    # float64 and list input are accepted and give the same answer
    np.testing.assert_allclose(head.predict_proba(X_test[:3].astype(np.float64).tolist()), proba[:3])


@pytest.mark.parametrize("method", ["predict", "predict_proba", "logits"])
def test_use_before_fit_is_a_clear_error(method) -> None:
    with pytest.raises(NotFittedError, match="not fitted"):
        getattr(SoftmaxHead(), method)(np.zeros((1, 3), np.float32))
    assert issubclass(NotFittedError, RuntimeError)
    with pytest.raises(NotFittedError):
        SoftmaxHead().to_state()


def test_predict_checks_feature_count(recipe_head) -> None:
    head, _ = recipe_head
    with pytest.raises(ValueError, match="63 features, the head expects 64"):
        head.predict(np.zeros((2, 63), np.float32))


# ---------------------------------------------------------------------- persistence
@pytest.mark.parametrize("kw", [dict(), dict(hidden_units=16, standardize=True, optimizer="adam")])
def test_state_round_trip_is_exact(digits, kw) -> None:
    X_train, y_train, _, _, X_test, _ = digits
    head = SoftmaxHead(how_many_training_steps=200, **kw).fit(X_train, y_train)
    tensors, config = head.to_state()
    assert all(t.dtype == np.float32 for t in tensors.values())
    config = json.loads(json.dumps(config))  # survives a manifest
    assert config["n_features"] == 64 and config["n_classes"] == 10
    assert config["hidden_units"] == kw.get("hidden_units", 0)
    assert config["activation"] == ("relu" if kw.get("hidden_units") else None)
    loaded = SoftmaxHead.from_state(tensors, config)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), head.predict_proba(X_test))
    assert loaded.get_params() == head.get_params()
    # The loaded head owns its arrays: changing the saved dict later does not change it.
    tensors["final.bias"][:] = 100
    np.testing.assert_array_equal(loaded.predict_proba(X_test), head.predict_proba(X_test))


def test_from_state_names_the_bad_tensor(recipe_head) -> None:
    head, _ = recipe_head
    tensors, config = head.to_state()
    wrong = dict(tensors, **{"final.weight": tensors["final.weight"][:, :9]})
    with pytest.raises(ValueError, match=r"'final.weight' has shape \(64, 9\), expected \(64, 10\)"):
        SoftmaxHead.from_state(wrong, config)
    with pytest.raises(HeadStateError, match="missing tensor 'final.bias'"):
        SoftmaxHead.from_state({"final.weight": tensors["final.weight"]}, config)
    with pytest.raises(HeadStateError, match="unexpected tensor 'hidden.weight'"):
        SoftmaxHead.from_state(dict(tensors, **{"hidden.weight": np.zeros((64, 4))}), config)
    with pytest.raises(HeadStateError, match="lacks 'n_classes'"):
        SoftmaxHead.from_state(tensors, {k: v for k, v in config.items() if k != "n_classes"})
    nan = dict(tensors, **{"final.bias": np.full(10, np.nan, np.float32)})
    with pytest.raises(HeadStateError, match="'final.bias' contains NaN"):
        SoftmaxHead.from_state(nan, config)
    # A temperature that float32 rounds to 0 (or one no calibration gives) would make every probability NaN.
    for temperature in (1.3e-296, 0.0, -1.0, math.inf, math.nan, 1e6):
        with pytest.raises(HeadStateError, match="temperature must be a number from 0.05 to 20.0"):
            SoftmaxHead.from_state(tensors, dict(config, temperature=temperature))
    assert issubclass(HeadStateError, ModelError), "the CLI reports it as a bad model, in one line"


# ---------------------------------------------------------------------- input checks
def _two_blobs() -> tuple[np.ndarray, np.ndarray]:
    X = load_digits().data[:200] / 16.0
    return X.astype(np.float32), (load_digits().target[:200] % 2)


@pytest.mark.parametrize("X, y, message", [
    (np.zeros(10), np.zeros(10, int), "2-D"),
    (np.zeros((10, 3)), np.zeros(9, int), "9 labels but there are 10"),
    (np.zeros((10, 3)), np.arange(10) * 0.5, "integer class indices"),
    (np.zeros((10, 3)), np.zeros(10, int), "at least 2 classes"),
    (np.zeros((10, 3)), np.arange(10) - 1, "outside"),
    (np.full((10, 3), np.nan), np.arange(10) % 2, "NaN"),
    (np.zeros((10, 3), dtype=object), np.arange(10) % 2, "real numbers"),
    (np.zeros((0, 3)), np.zeros(0, int), "no rows"),
])
def test_fit_rejects_bad_input(X, y, message) -> None:
    with pytest.raises(ValueError, match=message):
        SoftmaxHead(how_many_training_steps=1).fit(X, y)


def test_fit_rejects_labels_beyond_n_classes_and_half_a_validation_set() -> None:
    X, y = _two_blobs()
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        SoftmaxHead(n_classes=2).fit(X, y + 1)
    with pytest.raises(ValueError, match="both X_val and y_val"):
        SoftmaxHead().fit(X, y, X_val=X)
    with pytest.raises(ValueError, match="X_val has 3 features"):
        SoftmaxHead().fit(X, y, X[:, :3], y)


@pytest.mark.parametrize("kw, message", [
    (dict(optimizer="rmsprop"), "optimizer must be one of sgd, momentum, adam"),
    (dict(learning_rate=0), "learning_rate"),
    (dict(train_batch_size=0), "train_batch_size must be -1"),
    (dict(validation_batch_size=-2), "validation_batch_size must be -1"),
    (dict(dropout=1.0), "dropout"),
    (dict(hidden_units=-1), "hidden_units"),
    (dict(how_many_training_steps=0), "how_many_training_steps"),
    (dict(eval_step_interval=0), "eval_step_interval"),
    (dict(n_classes=1), "n_classes"),
])
def test_fit_rejects_bad_hyperparameters(kw, message) -> None:
    X, y = _two_blobs()
    with pytest.raises(ValueError, match=message):
        SoftmaxHead(**kw).fit(X, y)
