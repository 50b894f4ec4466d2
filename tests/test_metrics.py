"""Tests for headstart/metrics.py, checked against scikit-learn on real predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from headstart.metrics import (
    ClassMetrics,
    Evaluation,
    confusion_matrix,
    evaluate,
    format_evaluation,
    top_k_accuracy,
)

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _real_predictions(loader, C: float) -> tuple[np.ndarray, np.ndarray]:
    """(y_test, predict_proba) of a LogisticRegression fitted on a real dataset's train split."""
    X, y = loader(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    scale = X_tr.std(axis=0) + 1e-9
    clf = LogisticRegression(C=C).fit(X_tr / scale, y_tr)
    return y_te, clf.predict_proba(X_te / scale)


@pytest.fixture(scope="module")
def digits_preds() -> tuple[np.ndarray, np.ndarray]:
    # Strongly regularised on purpose (about 91 % accurate) so every metric has errors to count.
    return _real_predictions(load_digits, C=1e-3)


def _assert_matches_sklearn(ev: Evaluation, y: np.ndarray, proba: np.ndarray) -> None:
    n_classes = proba.shape[1]
    labels = list(range(n_classes))
    pred = proba.argmax(axis=1)
    assert ev.n == len(y)
    assert ev.accuracy == pytest.approx(skm.accuracy_score(y, pred))
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    got = np.array([[m.precision, m.recall, m.f1, m.support] for m in ev.per_class.values()])
    np.testing.assert_allclose(got, np.column_stack([p, r, f, s]), atol=1e-12)
    mp, mr, mf, _ = skm.precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    assert (ev.macro_precision, ev.macro_recall, ev.macro_f1) == pytest.approx((mp, mr, mf), abs=1e-12)
    np.testing.assert_array_equal(ev.confusion_matrix, skm.confusion_matrix(y, pred, labels=labels))
    assert ev.confusion_matrix.dtype == np.int64
    assert ev.cross_entropy == pytest.approx(skm.log_loss(y, proba, labels=labels), rel=1e-9)


def test_digits_logistic_regression_matches_sklearn(digits_preds) -> None:
    y, proba = digits_preds
    ev = evaluate(y, proba, DIGIT_NAMES)
    assert 0.5 < ev.accuracy < 1.0, "the fixture should make some mistakes"
    _assert_matches_sklearn(ev, y, proba)
    assert ev.labels == DIGIT_NAMES and list(ev.per_class) == list(DIGIT_NAMES)
    assert ev.top5_accuracy == pytest.approx(skm.top_k_accuracy_score(y, proba, k=5, labels=range(10)))
    for k in range(1, 10):
        assert top_k_accuracy(y, proba, k) == pytest.approx(
            skm.top_k_accuracy_score(y, proba, k=k, labels=range(10))
        )
    assert top_k_accuracy(y, proba, 10) == top_k_accuracy(y, proba, 99) == 1.0
    np.testing.assert_array_equal(
        confusion_matrix(y, proba.argmax(1), 10), skm.confusion_matrix(y, proba.argmax(1))
    )


def test_two_classes_real_data() -> None:
    y, proba = _real_predictions(load_breast_cancer, C=1e-2)
    ev = evaluate(y, proba, ["malignant", "benign"])
    _assert_matches_sklearn(ev, y, proba)
    assert ev.top5_accuracy is None


def test_class_never_predicted_and_class_absent(digits_preds) -> None:
    """Drop all 'nine's from y_true (absent) and forbid predicting 'eight' (never predicted)."""
    y, proba = digits_preds
    keep = y != 9
    y, proba = y[keep], proba[keep].copy()
    proba[:, 8] = 1e-6  # never the argmax, yet no clipping (sklearn clips at 2e-16, we at 1e-12)
    proba /= proba.sum(axis=1, keepdims=True)
    ev = evaluate(y, proba, DIGIT_NAMES)
    assert ev.per_class["eight"].precision == 0.0 and ev.per_class["eight"].recall == 0.0
    assert ev.per_class["eight"].support > 0
    assert ev.per_class["nine"].support == 0 and ev.per_class["nine"].recall == 0.0
    assert ev.confusion_matrix[:, 8].sum() == 0 and ev.confusion_matrix[9].sum() == 0
    _assert_matches_sklearn(ev, y, proba)


def test_class_neither_present_nor_predicted_is_left_out_of_macro() -> None:
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.3, 0.7, 0.0], [0.4, 0.6, 0.0]])
    ev = evaluate(y, proba, ["a", "b", "c"])
    assert ev.per_class["c"] == ClassMetrics(0.0, 0.0, 0.0, 0)
    assert ev.macro_recall == pytest.approx((0.5 + 1.0) / 2)
    _assert_matches_sklearn(ev, y, proba)


def test_top5_only_with_more_than_five_classes() -> None:
    rng = np.random.default_rng(0)
    for n_classes, expect_none in ((2, True), (5, True), (6, False)):
        proba = rng.dirichlet(np.ones(n_classes), size=40)
        y = rng.integers(0, n_classes, 40)
        ev = evaluate(y, proba, [f"c{i}" for i in range(n_classes)])
        assert (ev.top5_accuracy is None) == expect_none


def test_cross_entropy_clips_zero_probability() -> None:
    ev = evaluate(np.array([0, 1]), np.array([[1.0, 0.0], [1.0, 0.0]]), ["a", "b"])
    assert ev.cross_entropy == pytest.approx(-np.log(1e-12) / 2)


def test_invalid_input_raises_value_error() -> None:
    with pytest.raises(ValueError, match="0 samples"):
        evaluate(np.array([], dtype=int), np.zeros((0, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="columns"):
        evaluate(np.array([0, 1]), np.full((2, 3), 1 / 3), ["a", "b"])
    with pytest.raises(ValueError, match="outside"):
        evaluate(np.array([0, 2]), np.full((2, 2), 0.5), ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        evaluate(np.array([0, 1]), np.array([[np.nan, 1.0], [0.5, 0.5]]), ["a", "b"])
    with pytest.raises(ValueError, match="integer"):
        evaluate(np.array(["a", "b"]), np.full((2, 2), 0.5), ["a", "b"])
    with pytest.raises(ValueError):
        top_k_accuracy(np.array([], dtype=int), np.zeros((0, 2)), 1)
    with pytest.raises(ValueError, match="k must"):
        top_k_accuracy(np.array([0]), np.ones((1, 2)), 0)
    with pytest.raises(ValueError, match="duplicates"):
        evaluate(np.array([0, 1]), np.full((2, 2), 0.5), ["a", "a"])
    with pytest.raises(ValueError, match="length"):
        confusion_matrix([0, 1], [0], 2)


def test_to_dict_is_json_and_round_trips(digits_preds) -> None:
    y, proba = digits_preds
    ev = evaluate(y, proba, DIGIT_NAMES)
    d = json.loads(json.dumps(ev.to_dict()))
    assert set(d) == {
        "accuracy", "n", "top5_accuracy", "macro_precision", "macro_recall", "macro_f1",
        "cross_entropy", "per_class", "confusion_matrix", "labels",
    }
    assert set(d["per_class"]["zero"]) == {"precision", "recall", "f1", "support"}
    back = Evaluation.from_dict(d)
    assert back == ev
    np.testing.assert_array_equal(back.confusion_matrix, ev.confusion_matrix)
    assert back.confusion_matrix.dtype == np.int64
    small = evaluate(np.array([0, 1]), np.eye(2), ["a", "b"])
    assert Evaluation.from_dict(json.loads(json.dumps(small.to_dict()))).top5_accuracy is None
    assert small != ev


def test_format_evaluation(digits_preds) -> None:
    y, proba = digits_preds
    labels = [*DIGIT_NAMES[:9], "a_very_long_class_name_that_goes_on_and_on_forever"]
    ev = evaluate(y, proba, labels)
    text = format_evaluation(ev, title="Final test")
    assert f"Final test accuracy = {ev.accuracy:.1%} (N={len(y)})" in text
    assert "top-5 accuracy" in text and "macro avg" in text
    assert "precision" in text and "recall" in text and "support" in text
    assert "Confusion matrix" in text
    for name in DIGIT_NAMES[:9]:
        assert name in text
    assert "~" in text and labels[-1] not in text, "long labels are abbreviated"
    assert max(len(line) for line in text.splitlines()) < 160
    # the confusion-matrix rows carry the real counts
    row = next(line for line in text.splitlines()[::-1] if line.startswith("zero"))
    assert [int(v) for v in row.split()[1:]] == ev.confusion_matrix[0].tolist()


# ---------------------------------------------------------------- properties
@st.composite
def _problems(draw, integer_scores: bool = False):
    n = draw(st.integers(1, 60))
    n_classes = draw(st.integers(2, 12))
    y = draw(hnp.arrays(np.int64, n, elements=st.integers(0, n_classes - 1)))
    if integer_scores:  # many ties
        scores = draw(hnp.arrays(np.float64, (n, n_classes), elements=st.integers(0, 3).map(float)))
        return y, scores, n_classes
    raw = draw(
        hnp.arrays(np.float64, (n, n_classes), elements=st.floats(1e-3, 1.0, allow_nan=False))
    )
    return y, raw / raw.sum(axis=1, keepdims=True), n_classes


def _top_k_reference(y: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Brute force: sort each row by (score desc, index asc) and look in the first k."""
    hits = [
        int(t) in sorted(range(len(row)), key=lambda j: (-row[j], j))[:k] for t, row in zip(y, scores)
    ]
    return float(np.mean(hits))


@settings(max_examples=100, deadline=None)
@given(_problems())
def test_property_matches_sklearn(problem) -> None:
    y, proba, n_classes = problem
    ev = evaluate(y, proba, [f"class {i}" for i in range(n_classes)])
    _assert_matches_sklearn(ev, y, proba)
    assert ev.confusion_matrix.sum() == len(y)
    assert top_k_accuracy(y, proba, 1) == pytest.approx(ev.accuracy)
    assert top_k_accuracy(y, proba, n_classes) == 1.0
    if ev.top5_accuracy is not None:
        assert ev.accuracy <= ev.top5_accuracy <= 1.0


@settings(max_examples=100, deadline=None)
@given(_problems(integer_scores=True), st.integers(1, 12))
def test_property_top_k_with_ties(problem, k) -> None:
    y, scores, _ = problem
    assert top_k_accuracy(y, scores, k) == pytest.approx(_top_k_reference(y, scores, k))
    assert top_k_accuracy(y, scores, 1) == pytest.approx(np.mean(scores.argmax(axis=1) == y))
