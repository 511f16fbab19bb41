"""The model users get: :class:`Normalize` in front of an architecture's body, built by
:func:`create_model` from a registered architecture (:mod:`imgclf.models.registry`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgclf.errors import UsageError, first_line
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
    weights: str | Path | None = None,
) -> ImageClassifier:
    """Build a registered, library or user architecture with normalization inside.

    Args:
        name: A name from ``imgclf models``, ``timm:NAME``, ``torchvision:NAME`` or ``py:module:factory``
            (:mod:`imgclf.models.sources`).
        channels: Input channels, 1 or 3.
        image_size: ``(H, W)`` of the input, pixels.
        num_classes: Number of classes ``K`` (>= 2).
        mean, std: Per-channel normalization statistics, ``[0, 1]`` units (choose them with
            :func:`imgclf.models.sources.normalization`).
        options: The architecture's hyperparameters (see ``imgclf models``).
        weights: A weights file for the architecture's body (:func:`imgclf.models.sources.load_weights`).

    Returns:
        A module mapping ``float32`` ``(B, C, H, W)`` in ``[0, 1]`` to logits
        ``(B, K)``, in training mode, on the CPU.

    Raises:
        UsageError: Unknown name or option, an input too small for the
            architecture, or weights that do not fit it.
    """
    from imgclf.models.sources import load_weights

    resolved = resolve_options(name, options)
    entry = get_entry(name)
    if min(image_size) < entry.min_size:
        raise UsageError(
            f"model {name!r} needs images of at least {entry.min_size}x{entry.min_size} pixels, "
            f"got {image_size[1]}x{image_size[0]}; use --image-size"
        )
    body = entry.build(channels=channels, image_size=tuple(image_size), num_classes=num_classes, **resolved)
    if weights is not None:
        load_weights(body, weights)
    return ImageClassifier(Normalize(mean, std), body)


def classifier_head(body: nn.Module) -> str:
    """The qualified name, within ``body``, of the layer that produces the logits.

    timm's ``get_classifier()`` where the model has one; else the last ``nn.Linear`` registered
    (torchvision's ``fc``, ``classifier[-1]`` and ``heads.head``, and imgclf's own architectures).

    Raises:
        UsageError: If ``body`` has no linear layer.
    """
    names = {id(module): name for name, module in body.named_modules()}
    get_classifier = getattr(body, "get_classifier", None) or getattr(getattr(body, "body", None), "get_classifier",
                                                                      None)
    if callable(get_classifier):
        head = get_classifier()
        if isinstance(head, nn.Module) and id(head) in names and any(p.numel() for p in head.parameters()):
            return names[id(head)]
    linear = [name for name, module in body.named_modules() if isinstance(module, nn.Linear)]
    if not linear:
        raise UsageError(f"{type(body).__name__} has no linear classifier head to train alone or to replace")
    return linear[-1]


class GreyToRGB(nn.Module):
    """Repeats a grey channel three times, for a network built for colour images (torchvision's).

    Shape:
        Input ``(B, 1, H, W)``; ``body`` gets ``(B, 3, H, W)``; output what ``body`` returns.
    """

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.expand(-1, 3, -1, -1))


class ModeNeutral(nn.Module):
    """A wrapper whose ``train()`` and ``eval()`` set its own flag only, never the wrapped modules' (an attack
    must not change the model's mode; an exported graph refuses the change)."""

    def train(self, mode: bool = True) -> ModeNeutral:
        self.training = mode
        return self


class ExportedGraph(ModeNeutral):
    """A ``torch.export`` program's module: fixed in the mode it was traced in (eval, for imgclf's exports).

    Shape:
        Whatever the program takes and returns: for an image classifier ``(B, C, H, W)`` to ``(B, K)``.
    """

    def __init__(self, program: nn.Module):
        super().__init__()
        self.program = program

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raises UsageError where the program's guards refuse the input's shape (a program exported for one
        batch size), saying how to export it."""
        try:
            return self.program(x)
        except AssertionError as error:  # torch.export's shape guards fail with AssertionError
            raise UsageError(f"the exported program refuses input of shape {list(x.shape)} ({first_line(error)}); "
                             "export it with a dynamic batch dimension (torch.export.Dim), as imgclf export "
                             "does") from None
