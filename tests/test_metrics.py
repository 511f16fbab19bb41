import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, classification_report, f1_score

from imgclf.metrics import classification_metrics


def test_metrics_match_scikit_learn_on_random_predictions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 500)
    predictions = np.where(rng.random(500) < 0.7, labels, rng.integers(0, 5, 500))
    names = ["a", "b", "c", "d", "e"]
    m = classification_metrics(labels, predictions, names)
    assert m.accuracy == pytest.approx(accuracy_score(labels, predictions))
    assert m.macro_f1 == pytest.approx(f1_score(labels, predictions, average="macro"))
    assert m.balanced_accuracy == pytest.approx(balanced_accuracy_score(labels, predictions))
    report = classification_report(labels, predictions, target_names=names, output_dict=True)
    for name in names:
        for key in ("precision", "recall", "f1"):
            assert m.per_class[name][key] == pytest.approx(report[name][key if key != "f1" else "f1-score"])
        assert m.per_class[name]["support"] == report[name]["support"]
    assert np.array(m.confusion_matrix).sum() == 500 and m.n == 500


def test_hand_computed_example_with_a_never_predicted_class():
    m = classification_metrics(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), ["x", "y", "z"])
    assert m.accuracy == 0.5
    assert m.confusion_matrix == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    assert m.per_class["z"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m.per_class["y"]["precision"] == pytest.approx(1 / 3)


def test_top5_accuracy_matches_a_direct_count_and_is_left_out_with_five_classes_or_fewer():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 400)
    scores = rng.normal(size=(400, 10))
    scores[np.arange(400), labels] += rng.normal(1.0, 1.0, 400)  # the true class ranks high, not always top 5
    predictions = scores.argmax(1)
    m = classification_metrics(labels, predictions, [str(k) for k in range(10)], scores=scores)
    top5 = np.argsort(-scores, axis=1)[:, :5]  # no ties among continuous scores
    expected = float((top5 == labels[:, None]).any(1).mean())
    assert 0.5 < expected < 1.0 and m.top5_accuracy == pytest.approx(expected)
    assert m.top5_accuracy >= m.accuracy
    few = classification_metrics(labels % 5, scores[:, :5].argmax(1), list("abcde"), scores=scores[:, :5])
    assert few.top5_accuracy is None
    assert classification_metrics(labels, predictions, [str(k) for k in range(10)]).top5_accuracy is None
