"""Tests for headstart/metrics.py, checked against scikit-learn on real predictions."""

from __future__ import annotations

import json
import math

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


# ---------------------------------------------------------------- small test sets, empty classes, learning rates


def test_wilson_interval_matches_scipy() -> None:
    from scipy.stats import binomtest

    from headstart.metrics import wilson_interval

    for k, n in [(23, 29), (0, 10), (10, 10), (1, 3), (250, 307), (5, 5)]:
        low, high = wilson_interval(k, n)
        ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert low == pytest.approx(ref.low, abs=1e-9) and high == pytest.approx(ref.high, abs=1e-9), (k, n)
        assert 0.0 <= low <= k / n <= high <= 1.0
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 0)


def test_small_test_sets_are_flagged_with_their_interval() -> None:
    from headstart.metrics import small_sample_warnings, wilson_interval

    y = np.array([0] * 12 + [1] * 12 + [2] * 4)  # 28 images, one class with 4
    proba = np.eye(3)[np.where(np.arange(28) % 7 == 0, (y + 1) % 3, y)]
    ev = evaluate(y, proba, ["cat", "dog", "fox"])
    notes = small_sample_warnings(ev)
    low, high = wilson_interval(round(ev.accuracy * 28), 28)
    assert notes[0] == (f"only 28 test images: an accuracy of {ev.accuracy:.1%} is not meaningful (95% "
                        f"confidence interval {low:.1%} to {high:.1%}); 30 or more are needed")
    assert notes[1].startswith("1 of 3 classes have under 5 test images") and notes[1].endswith("fox (4)")
    big = evaluate(np.repeat([0, 1], 20), np.eye(2)[np.repeat([0, 1], 20)], ["a", "b"])
    assert small_sample_warnings(big) == []


def test_a_class_without_test_images_shows_na_and_says_why() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    predicted_as = np.array([0, 0, 1, 2, 0, 1])  # one image wrongly called "fox", which has no test image
    labels = ["cat", "dog", "fox", "owl"]
    ev = evaluate(y, np.eye(4)[predicted_as], labels)
    text = format_evaluation(ev)
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():  # the table's rows come before the confusion matrix's
        if line.split()[:1] in (["fox"], ["owl"]):
            rows.setdefault(line.split()[0], line.split()[1:])
    assert rows["fox"][:4] == ["0.000", "n/a", "n/a", "0"]  # predicted once, wrongly: precision is a real 0
    assert rows["owl"][:4] == ["n/a", "n/a", "n/a", "0"]  # never present, never predicted
    assert "0.000   0.000   0.000       0" not in text
    assert "n/a: no test image of fox, owl, so recall and F1 are undefined" in text


def test_details_false_keeps_the_accuracy_lines_only(digits_preds) -> None:
    y, proba = digits_preds
    text = format_evaluation(evaluate(y, proba, DIGIT_NAMES), title="Final test", details=False)
    assert text.splitlines() == [f"Final test accuracy = {np.mean(proba.argmax(1) == y):.1%} (N={len(y)})",
                                 f"Final test top-5 accuracy = {top_k_accuracy(y, proba, 5):.1%}"]


def test_a_perfect_fit_has_a_cross_entropy_of_plus_zero() -> None:
    ev = evaluate(np.array([0, 1]), np.eye(2), ["a", "b"])
    assert ev.cross_entropy == 0.0 and math.copysign(1.0, ev.cross_entropy) == 1.0
    assert "-0.0" not in format_evaluation(ev)


def _history(train: list[float], val: list[float]) -> list[dict]:
    return [{"step": 100 * i, "cross_entropy": t, "validation_cross_entropy": v} for i, (t, v) in
            enumerate(zip(train, val))]


# Validation losses of real runs on 300 Fashion-MNIST images (adam unless said), every 100 steps.
SANE = {"adam 0.001": [2.21, 0.44, 0.34, 0.26, 0.36, 0.24, 0.24, 0.35, 0.28, 0.37, 0.25],
        "adam 0.0001": [2.29, 1.44, 1.02, 0.77, 0.68, 0.65, 0.6, 0.63, 0.51, 0.52, 0.37],
        "sgd 0.0001": [2.3, 2.26, 2.22, 2.18, 2.15, 2.12, 2.09, 2.06, 2.02, 1.98, 1.92],
        "sgd 1.0": [4.72, 0.57, 0.33, 0.29, 0.65, 0.17, 0.21, 0.5, 0.37, 0.61, 0.34]}


@pytest.mark.parametrize("name", sorted(SANE))
def test_sane_learning_rates_get_no_warning(name: str) -> None:
    from headstart.metrics import learning_rate_warning

    val = SANE[name]
    assert learning_rate_warning(_history([2.2] + [0.1] * (len(val) - 1), val), 10, 0.001) is None


def test_too_high_learning_rates_get_one_line_each() -> None:
    from headstart.metrics import learning_rate_warning

    blown = learning_rate_warning(_history([21.64] + [0.0] * 10, [77.9, 13.0, 9.7, 6.7, 3.3, 11.0]), 10, 1.0)
    assert blown.startswith("--learning_rate 1 looks too high: the first step took the training loss to 21.64")
    assert blown.endswith("try --learning_rate 0.1 or lower") and "\n" not in blown
    never = learning_rate_warning(_history([2.0] * 6, [43.6, 7.9, 5.8, 4.3, 10.6, 5.8]), 10, 10.0)
    assert "never fell below 4.30" in never
    ended = learning_rate_warning(_history([2.0] * 5, [2.2, 0.5, 0.4, 0.9, 2.0]), 10, 0.1)
    assert "ended at 2.00, far above its best of 0.40 (step 200)" in ended
    assert learning_rate_warning(_history([float("nan")], [float("nan")]), 10, 1.0) is None
