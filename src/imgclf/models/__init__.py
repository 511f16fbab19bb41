"""Model registry. Every model takes ``float32`` ``(B, C, H, W)`` in ``[0, 1]``
and returns logits ``(B, K)``; normalization is its first layer."""

# Importing the architecture modules registers their models, in the order `imgclf models` lists them.
from imgclf.models import small  # noqa: F401, I001  (registers its models; order as listed above)
from imgclf.models import resnet, vit, fast  # noqa: F401, I001  (as above)
from imgclf.models.registry import (
    MODELS,
    ImageClassifier,
    Normalize,
    create_model,
    get_entry,
    register_model,
    resolve_options,
)

__all__ = ["MODELS", "ImageClassifier", "Normalize", "create_model", "get_entry", "register_model",
           "resolve_options"]
