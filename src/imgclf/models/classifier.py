"""The model users get: :class:`Normalize` in front of an architecture's body, built by
:func:`create_model` from a registered architecture (:mod:`imgclf.models.registry`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from imgclf.errors import UsageError
from imgclf.models.registry import get_entry, resolve_options


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``; the first layer of every imgclf model.

    The statistics are buffers, saved with the weights.

    Args:
        mean: Per-channel means, in ``[0, 1]`` pixel units, length ``C``.
        std: Per-channel standard deviations, all ``> 0``, length ``C``.

    Shape:
        Input ``(B, C, H, W)`` float in ``[0, 1]``; output the same shape.
    """

    mean: torch.Tensor  # (1, C, 1, 1) float32 buffers, saved with the weights
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ImageClassifier(nn.Module):
    """``Normalize`` followed by an architecture's body.

    Shape:
        Input ``(B, C, H, W)`` ``float32`` in ``[0, 1]``; output logits
        ``(B, K)`` (never probabilities).
    """

    def __init__(self, normalize: Normalize, body: nn.Module):
        super().__init__()
        self.normalize = normalize
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))


def create_model(
    name: str,
    *,
    channels: int,
    image_size: tuple[int, int],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    options: dict[str, Any] | None = None,
) -> ImageClassifier:
    """Build a registered model with normalization inside.

    Args:
        name: A name from ``imgclf models``.
        channels: Input channels, 1 or 3.
        image_size: ``(H, W)`` of the input, pixels.
        num_classes: Number of classes ``K`` (>= 2).
        mean, std: Per-channel normalization statistics, ``[0, 1]`` units.
        options: The architecture's hyperparameters (see ``imgclf models``).
            With ``pretrained=true`` (timm models), ``mean`` and ``std`` are
            replaced by those the pretrained weights were trained with.

    Returns:
        A module mapping ``float32`` ``(B, C, H, W)`` in ``[0, 1]`` to logits
        ``(B, K)``, in training mode, on the CPU.

    Raises:
        UsageError: Unknown name or option, or an input too small for the
            architecture.
    """
    resolved = resolve_options(name, options)
    entry = get_entry(name)
    if min(image_size) < entry.min_size:
        raise UsageError(
            f"model {name!r} needs images of at least {entry.min_size}x{entry.min_size} pixels, "
            f"got {image_size[1]}x{image_size[0]}; use --image-size"
        )
    body = entry.build(channels=channels, image_size=tuple(image_size), num_classes=num_classes, **resolved)
    if resolved.get("pretrained"):
        # Pretrained weights expect the statistics they were trained with.
        cfg = getattr(body, "pretrained_cfg", {}) or {}
        if len(cfg.get("mean", ())) == channels:
            mean, std = cfg["mean"], cfg["std"]
    return ImageClassifier(Normalize(mean, std), body)
