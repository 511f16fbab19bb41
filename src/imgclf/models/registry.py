"""Model registry: ``@register_model`` builders and :func:`create_model`.

A builder has the signature ``builder(*, channels, image_size, num_classes,
<hyperparameters with defaults>) -> nn.Module``; it returns the network body
that maps normalized images to logits. :func:`create_model` validates the
user's hyperparameters against the builder's keyword-only arguments and puts a
:class:`Normalize` layer in front, so every model takes pixel-space input.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from imgclf.errors import UsageError, unknown_choice

_FIXED = ("channels", "image_size", "num_classes")


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture."""

    name: str
    summary: str
    builder: Callable[..., nn.Module]
    min_size: int  # smallest image side the architecture accepts, in pixels

    def defaults(self) -> dict[str, Any]:
        """The builder's hyperparameters and their default values."""
        params = inspect.signature(self.builder).parameters.values()
        return {p.name: p.default for p in params if p.name not in _FIXED}


MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, *, summary: str, min_size: int = 1):
    """Decorator registering a builder under ``name`` (see the module docstring)."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = ModelEntry(name, summary, builder, min_size)
        return builder

    return decorate


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


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``: a registered model, or ``timm:<model>``.

    Raises:
        UsageError: If ``name`` is neither.
    """
    from imgclf.models.timm_models import PREFIX, timm_builder

    if name in MODELS:
        return MODELS[name]
    if name.startswith(PREFIX) and len(name) > len(PREFIX):
        return ModelEntry(name, "a timm model", timm_builder(name[len(PREFIX):]), 1)
    raise unknown_choice("model", name, [*MODELS, "timm:<name>"])


def resolve_options(name: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """All hyperparameters of model ``name``: defaults overridden by ``options``.

    Raises:
        UsageError: Unknown model name or option, or an option of the wrong type.
    """
    from imgclf.config import resolve_options as resolve

    return resolve("model", name, get_entry(name).defaults(), options)


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
    body = entry.builder(channels=channels, image_size=tuple(image_size), num_classes=num_classes, **resolved)
    if resolved.get("pretrained"):
        # Pretrained weights expect the statistics they were trained with.
        cfg = getattr(body, "pretrained_cfg", {}) or {}
        if len(cfg.get("mean", ())) == channels:
            mean, std = cfg["mean"], cfg["std"]
    return ImageClassifier(Normalize(mean, std), body)
