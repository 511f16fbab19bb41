"""Certified robustness: randomized smoothing's predictions and certified L2 radii (:mod:`.smoothing`).

The names load on first use, so importing the package does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgclf.lazy import lazy_exports

if TYPE_CHECKING:
    from imgclf.certification.smoothing import (
        ABSTAIN,
        Certificates,
        certify,
        lower_confidence_bound,
        max_certifiable_radius,
        noise_counts,
        predict,
    )

__all__ = ["ABSTAIN", "Certificates", "certify", "lower_confidence_bound", "max_certifiable_radius", "noise_counts",
           "predict"]
__getattr__, __dir__ = lazy_exports(__name__, {"imgclf.certification.smoothing": tuple(__all__)})
