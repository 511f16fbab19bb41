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
    top_k_accuracy_score,
)

from imgclf.notebook import ResultHTML, Table

#: Top-k accuracy is reported for data sets with more than this many classes.
TOP_K = 5


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
        top5_accuracy: Share of examples whose true class is among the 5 highest scores, in
            ``[0, 1]``; None with 5 classes or fewer, or without scores.
    """

    accuracy: float
    macro_f1: float
    balanced_accuracy: float
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[int]]
    n: int
    top5_accuracy: float | None = None

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

    def html(self, title: str = "Clean metrics") -> ResultHTML:
        """The metrics and the per-class report, as Jupyter shows them."""
        facts = [f"top-1 accuracy {self.accuracy:.4f} on {self.n:,} examples",
                 f"macro F1 {self.macro_f1:.4f}, balanced accuracy {self.balanced_accuracy:.4f}"
                 + ("" if self.top5_accuracy is None else f", top-5 accuracy {self.top5_accuracy:.4f}")]
        rows = [[name, row["precision"], row["recall"], row["f1"], int(row["support"])]
                for name, row in self.per_class.items()]
        return ResultHTML(title, facts, [Table(["class", "precision", "recall", "F1", "support"], rows)])

    def _repr_html_(self) -> str:
        return self.html().render()


def classification_metrics(
    labels: np.ndarray, predictions: np.ndarray, class_names: list[str] | tuple[str, ...], *,
    scores: np.ndarray | None = None,
) -> ClassificationMetrics:
    """Compute accuracy, macro F1, balanced accuracy, per-class report, confusion matrix and, with
    ``scores`` and more than 5 classes, top-5 accuracy.

    Args:
        labels: True classes, ``int`` array of shape ``(n_samples,)`` in ``[0, K)``.
        predictions: Predicted classes, same shape and range.
        class_names: ``K`` names; classes absent from ``labels`` still get a row
            in ``per_class`` and the confusion matrix. Macro F1 averages over
            the classes that occur in ``labels`` or ``predictions``, as
            scikit-learn's ``f1_score(average="macro")`` does.
        scores: Optional ``float`` array of shape ``(n_samples, K)``: logits or probabilities (any
            score whose order ranks the classes). Among equal scores the higher class index ranks first, as
            scikit-learn's ``top_k_accuracy_score`` does.

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
        top5_accuracy=float(top_k_accuracy_score(labels, scores, k=TOP_K, labels=ks))
        if scores is not None and len(ks) > TOP_K else None,
    )
