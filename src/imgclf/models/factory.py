"""Building a model by name: :func:`create_model`, a registered, library or user architecture with its
normalization inside."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imgclf.errors import UsageError
from imgclf.models.classifier import ImageClassifier, Normalize
from imgclf.models.registry import get_entry, resolve_options
from imgclf.models.source import ModelSource
from imgclf.models.weights import load_weights


def create_model(
    name: str | ModelSource,
    *,
    channels: int,
    image_size: tuple[int, int],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    options: dict[str, Any] | None = None,
    weights: str | Path | None = None,
) -> ImageClassifier:
    """Build a registered, library or user architecture with normalization inside.

    Args:
        name: A name from ``imgclf models``, ``timm:NAME``, ``torchvision:NAME`` or ``py:module:factory``,
            or its parsed :class:`~imgclf.models.source.ModelSource` (a run's ``settings.source``).
        channels: Input channels, 1 or 3.
        image_size: ``(H, W)`` of the input, pixels.
        num_classes: Number of classes ``K`` (>= 2).
        mean, std: Per-channel normalization statistics, ``[0, 1]`` units (choose them with
            :func:`imgclf.models.normalization.normalization`).
        options: The architecture's hyperparameters (see ``imgclf models``).
        weights: A weights file for the architecture's body (:func:`imgclf.models.weights.load_weights`).

    Returns:
        A module mapping ``float32`` ``(B, C, H, W)`` in ``[0, 1]`` to logits
        ``(B, K)``, in training mode, on the CPU.

    Raises:
        UsageError: Unknown name or option, an input too small for the
            architecture, or weights that do not fit it.
    """
    entry = get_entry(name)
    resolved = resolve_options(entry, options)
    if min(image_size) < entry.min_size:
        raise UsageError(
            f"model {entry.name!r} needs images of at least {entry.min_size}x{entry.min_size} pixels, "
            f"got {image_size[1]}x{image_size[0]}; use --image-size"
        )
    body = entry.build(channels=channels, image_size=tuple(image_size), num_classes=num_classes, **resolved)
    if weights is not None:
        load_weights(body, weights)
    return ImageClassifier(Normalize(mean, std), body)
