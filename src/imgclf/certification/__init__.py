"""Certified robustness: randomized smoothing's predictions and certified L2 radii (:mod:`.smoothing`), the
L2 attack made for the smoothed classifier that bounds its robust accuracy from above (:mod:`.smoothed_attack`), and
the evaluation that brackets a model's robust accuracy between the two (:mod:`.evaluation`: :func:`certify`).

The names load on first use, so importing the package does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgclf.lazy import lazy_exports

if TYPE_CHECKING:
    from imgclf.certification.evaluation import CertificationResult, CertifiedRow, certify
    from imgclf.certification.smoothed_attack import smooth_adv
    from imgclf.certification.smoothing import (
        ABSTAIN,
        Certificates,
        certificates,
        lower_confidence_bound,
        max_certifiable_radius,
        noise_counts,
        predict,
    )

__all__ = ["CertificationResult", "CertifiedRow", "certify", "ABSTAIN", "Certificates", "certificates",
           "lower_confidence_bound", "max_certifiable_radius", "noise_counts", "predict", "smooth_adv"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "imgclf.certification.evaluation": tuple(__all__[:3]),
    "imgclf.certification.smoothing": tuple(__all__[3:-1]),
    "imgclf.certification.smoothed_attack": ("smooth_adv",),
})
