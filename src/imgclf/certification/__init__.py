"""Certified robustness: randomized smoothing's predictions and certified L2 radii (:mod:`.smoothing`), and the
L2 attack made for the smoothed classifier that bounds its robust accuracy from above (:mod:`.smooth_adv`).

The names load on first use, so importing the package does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgclf.lazy import lazy_exports

if TYPE_CHECKING:
    from imgclf.certification.smooth_adv import smooth_adv
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
           "predict", "smooth_adv"]
__getattr__, __dir__ = lazy_exports(__name__, {"imgclf.certification.smoothing": tuple(__all__[:-1]),
                                               "imgclf.certification.smooth_adv": ("smooth_adv",)})
