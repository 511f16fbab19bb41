"""Figures and the HTML report, rendered from what a run folder holds."""

from imgclf.report.compare import compare_runs
from imgclf.report.html import write_report
from imgclf.report.plots import (
    adversarial_figure,
    confusion_matrix_figure,
    prediction_grid,
    robustness_curve,
    save_figure,
    training_curves,
)

__all__ = [
    "adversarial_figure",
    "compare_runs",
    "confusion_matrix_figure",
    "prediction_grid",
    "robustness_curve",
    "save_figure",
    "training_curves",
    "write_report",
]
