"""Common corruptions: the fifteen of the CIFAR-10-C / ImageNet-C benchmark (Hendrycks and Dietterich, ICLR
2019) for grey and colour images at any size (:mod:`~imgclf.corruptions.common`), the registry they are
declared in (:mod:`~imgclf.corruptions.registry`), applying one to a batch (:func:`corrupt`), and the
evaluation of a model under them: accuracy, calibration, mean corruption error, and mCE against a baseline
(:mod:`~imgclf.corruptions.evaluation`).

The registry's names load at once and without torch; the rest loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgclf.corruptions.registry import (
    CORRUPTIONS,
    GROUPS,
    SEVERITIES,
    CorruptionSpec,
    corruption_choices,
    corruption_names,
    parse_corruptions,
    parse_severities,
    register_corruption,
    unregister_corruption,
)
from imgclf.lazy import lazy_exports

if TYPE_CHECKING:
    from imgclf.corruptions.apply import corrupt
    from imgclf.corruptions.evaluation import (
        CorruptionEntry,
        CorruptionEvaluation,
        against_baseline,
        corruption_robustness,
        corruption_samples,
    )

__getattr__, __dir__ = lazy_exports(__name__, {
    "imgclf.corruptions.apply": ("corrupt",),
    "imgclf.corruptions.evaluation": ("CorruptionEntry", "CorruptionEvaluation", "against_baseline",
                                      "corruption_robustness", "corruption_samples"),
})

__all__ = ["CORRUPTIONS", "GROUPS", "SEVERITIES", "CorruptionEntry", "CorruptionEvaluation", "CorruptionSpec",
           "against_baseline", "corrupt", "corruption_choices", "corruption_names", "corruption_robustness",
           "corruption_samples", "parse_corruptions", "parse_severities", "register_corruption",
           "unregister_corruption"]
