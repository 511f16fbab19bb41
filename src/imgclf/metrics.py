"""Classification metrics: pure functions over labels and predictions (scikit-learn)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


@dataclass
class ClassificationMetrics:
    """Clean metrics of one split.

    Attributes:
        accuracy: Top-1 accuracy in ``[0, 1]``.
        macro_f1: Unweighted mean of per-class F1, in ``[0, 1]``.
        balanced_accuracy: Mean per-class recall, in ``[0, 1]``.
        per_class: ``{class name: {precision, recall, f1, support}}``.
        confusion_matrix: ``K x K`` counts; row = true class, column = predicted.
        n: Number of examples.
    """

    accuracy: float
    macro_f1: float
    balanced_accuracy: float
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[int]]
    n: int

    def __post_init__(self) -> None:
        """Raises ValueError if a class's row lacks a number for precision, recall, F1 or support
        (a ``metrics.json`` edited or damaged by hand)."""
        for name, row in self.per_class.items():
            if not isinstance(row, dict) or not all(
                    isinstance(row.get(key), int | float) and not isinstance(row.get(key), bool)
                    for key in ("precision", "recall", "f1", "support")):
                raise ValueError(f"per_class[{name!r}] must hold numbers precision, recall, f1 and support, "
                                 f"got {row!r:.80}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def classification_metrics(
    labels: np.ndarray, predictions: np.ndarray, class_names: list[str] | tuple[str, ...]
) -> ClassificationMetrics:
    """Compute accuracy, macro F1, balanced accuracy, per-class report and confusion matrix.

    Args:
        labels: True classes, ``int`` array of shape ``(n_samples,)`` in ``[0, K)``.
        predictions: Predicted classes, same shape and range.
        class_names: ``K`` names; classes absent from ``labels`` still get a row
            in ``per_class`` and the confusion matrix. Macro F1 averages over
            the classes that occur in ``labels`` or ``predictions``, as
            scikit-learn's ``f1_score(average="macro")`` does.

    Returns:
        The metrics; precision of a never-predicted class is 0 (no warning).
    """
    ks = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=ks, zero_division=0
    )
    per_class = {
        str(name): {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
        }
        for k, name in enumerate(class_names)
    }
    return ClassificationMetrics(
        accuracy=float(accuracy_score(labels, predictions)),
        macro_f1=float(f1_score(labels, predictions, average="macro", zero_division=0)),
        balanced_accuracy=float(balanced_accuracy_score(labels, predictions)),
        per_class=per_class,
        confusion_matrix=confusion_matrix(labels, predictions, labels=ks).tolist(),
        n=int(len(labels)),
    )
