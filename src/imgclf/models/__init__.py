"""Model registry. Every model takes ``float32`` ``(B, C, H, W)`` in ``[0, 1]``
and returns logits ``(B, K)``; normalization is its first layer."""

from imgclf.models import architectures as _architectures  # noqa: F401  (registers the models)
from imgclf.models.registry import (
    MODELS,
    ImageClassifier,
    Normalize,
    create_model,
    register_model,
    resolve_options,
)

__all__ = ["MODELS", "ImageClassifier", "Normalize", "create_model", "register_model", "resolve_options"]
