"""Applying a registered corruption to a batch of images, reproducibly."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch

from imgclf.corruptions.registry import CORRUPTIONS, SEVERITIES, corruption_names


def image_generator(seed: int, name: str, severity: int, index: int) -> np.random.Generator:
    """The random generator of one image under one corruption and severity: the same image gets the same
    corruption whatever the batch it is in or the other corruptions asked for."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), severity, index])


def corrupt(images: torch.Tensor, name: str, severity: int, *, seed: int = 0,
            indices: Sequence[int] | None = None) -> torch.Tensor:
    """``images`` under corruption ``name`` at ``severity``.

    Args:
        images: ``(N, C, H, W)`` float in ``[0, 1]``, ``C`` 1 or 3, any size.
        name: A registered corruption (:func:`corruption_names`).
        severity: 0 (the images as they are) or 1 to 5.
        seed: With ``indices``, fixes every random draw: the same seed gives the same images.
        indices: ``(N,)`` a stable number per image (its position in the test split), so that an image is
            corrupted the same way in any batch; default ``0..N-1``.

    Returns:
        ``(N, C, H, W)`` float32 in ``[0, 1]``, on ``images``' device. As the published data sets' files,
        the images are 8-bit: the input is rounded to 1/255 steps and the output truncated to them.

    Raises:
        ValueError: On an unknown name, a severity outside 0..5, ``C`` not 1 or 3, or a side under 8 pixels.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(corruption_names())}")
    if severity not in (0, *SEVERITIES):
        raise ValueError(f"severity must be 0 to 5, got {severity!r}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C 1 or 3, got {tuple(images.shape)}")
    if min(images.shape[2:]) < 8:
        raise ValueError(f"images must be at least 8x8 pixels to corrupt, got {tuple(images.shape[2:])}")
    if severity == 0:
        return images.clone()
    indices = range(len(images)) if indices is None else indices
    if len(indices) != len(images):
        raise ValueError(f"indices must give one number per image, got {len(indices)} for {len(images)}")
    function = CORRUPTIONS[name].load()
    pixels = np.round(images.detach().float().cpu().numpy().clip(0, 1) * 255) / 255  # (N, C, H, W)
    batch = np.ascontiguousarray(pixels.transpose(0, 2, 3, 1), dtype=np.float64)  # -> (N, H, W, C)
    result = function(batch, severity, [image_generator(seed, name, severity, int(i)) for i in indices])
    if result.shape != batch.shape:
        raise RuntimeError(f"corruption {name!r} changed the images' shape from {batch.shape} to {result.shape}")
    out = np.floor(np.clip(result, 0, 1) * 255 + 1e-6).transpose(0, 3, 1, 2) / 255  # (N, H, W, C) -> (N, C, H, W)
    return torch.from_numpy(out.astype(np.float32)).to(images.device)
