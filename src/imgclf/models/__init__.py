"""Model registry. Every model takes ``float32`` ``(B, C, H, W)`` in ``[0, 1]``
and returns logits ``(B, K)``; normalization is its first layer.

The registry (names, options, defaults) loads without torch; the architectures on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgclf.lazy import lazy_exports
from imgclf.models.registry import MODELS, ModelEntry, get_entry, register_model, resolve_options

if TYPE_CHECKING:
    from imgclf.models.classifier import ImageClassifier, Normalize
    from imgclf.models.factory import create_model

__getattr__, __dir__ = lazy_exports(__name__, {
    "imgclf.models.classifier": ("ImageClassifier", "Normalize"),
    "imgclf.models.factory": ("create_model",),
})

__all__ = ["MODELS", "ImageClassifier", "ModelEntry", "Normalize", "create_model", "get_entry", "register_model",
           "resolve_options"]
