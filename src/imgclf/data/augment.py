"""Augmentation applied to whole batches at once, on whatever device holds them.

Every function takes ``float32`` images of shape ``(B, C, H, W)`` in ``[0, 1]``
and a :class:`torch.Generator` on the same device, draws one random choice per
image, and returns a new batch of the same shape and range. There is no
per-image Python work, which is what keeps small-image training fast (the
approach of airbench's ``CifarLoader``, Keller Jordan 2024).

Presets (``data.augment``):

* ``none``: identity.
* ``flip-crop``: random crop after 4 px zero padding, then horizontal flip with
  probability 1/2 (the standard CIFAR recipe; torchvision's
  ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``).
* ``flip-jitter``: horizontal flip, then colour jitter (brightness, contrast and
  saturation factors uniform in ``[0.8, 1.2]``), for photos resized when the data
  is loaded. ``seed000`` is its earlier name, still accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: ``augment(images, generator) -> images``: a batch in, a batch of the same shape and range out.
Augmentation = Callable[["torch.Tensor", "torch.Generator"], "torch.Tensor"]
# torch is imported inside the functions: the configuration reads AUGMENTATIONS' names without it.


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    import torch

    return torch.rand(n, generator=gen, device=device).mul_(high - low).add_(low)


def random_flip(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    import torch

    flip = torch.rand(images.shape[0], generator=gen, device=images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)


def random_crop(images: torch.Tensor, gen: torch.Generator, *, padding: int = 4) -> torch.Tensor:
    """Pad with zeros by ``padding`` pixels, then crop each image back at a random offset."""
    import torch
    import torch.nn.functional as F

    b, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)  # (B, C, H + 2p, W + 2p)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=images.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=images.device)
    rows = dy[:, None] + torch.arange(h, device=images.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=images.device)  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None]  # (B, 1, 1)
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return cropped.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def _grey(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma of RGB images, ``(B, 3, H, W)`` -> ``(B, 1, H, W)``."""
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def colour_jitter(images: torch.Tensor, gen: torch.Generator, *, strength: float = 0.2) -> torch.Tensor:
    """Scale brightness, contrast and (for RGB) saturation by factors in ``[1 - s, 1 + s]``.

    The same blending formulas as torchvision's ``adjust_brightness``,
    ``adjust_contrast`` and ``adjust_saturation``, with one factor per image.
    """
    b, device = images.shape[0], images.device
    out = images * _uniform(b, 1 - strength, 1 + strength, gen, device).view(-1, 1, 1, 1)
    out = out.clamp_(0, 1)
    grey = _grey(out) if out.shape[1] == 3 else out
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    factor = _uniform(b, 1 - strength, 1 + strength, gen, device).view(-1, 1, 1, 1)
    out = (factor * out + (1 - factor) * mean).clamp_(0, 1)
    if out.shape[1] == 3:
        factor = _uniform(b, 1 - strength, 1 + strength, gen, device).view(-1, 1, 1, 1)
        out = (factor * out + (1 - factor) * _grey(out)).clamp_(0, 1)
    return out


def _flip_crop(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return random_flip(random_crop(images, gen), gen)


def _flip_jitter(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return colour_jitter(random_flip(images, gen), gen)


AUGMENTATIONS: dict[str, Augmentation | None] = {"none": None, "flip-crop": _flip_crop, "flip-jitter": _flip_jitter,
                                                 "seed000": _flip_jitter}  # seed000: flip-jitter's earlier name
