"""The per-channel normalization a model gets, and the input size a library's weights were trained at.

Normalization is applied inside the model (:class:`imgclf.models.classifier.Normalize`), so eps stays in pixel
units.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from imgclf.errors import UsageError
from imgclf.models.builders import library_preprocessing

if TYPE_CHECKING:
    from imgclf.config import ModelConfig


def normalization(model: ModelConfig, *, channels: int, data_mean: Sequence[float],
                  data_std: Sequence[float]) -> tuple[list[float], list[float], str]:
    """The per-channel mean and std a model gets (applied inside it, so eps stays in pixel units), and where
    they come from, in words.

    In order: ``--mean/--std``; the normalization saved in an imgclf model's weights file (``--weights
    RUN/model.safetensors``); for weights from a library or a file (``pretrained=true`` or ``--weights``),
    the library's metadata (timm's pretrained configuration, torchvision's weights; averaged over the colour
    channels for grey images), else none at all (the model gets ``[0, 1]`` pixels); an exported model, none
    (imgclf's exports hold theirs); a model trained here from scratch, the training data's statistics.

    Raises:
        UsageError: If ``--mean/--std`` do not have one value per channel.
    """
    if model.mean is not None and model.std is not None:
        if len(model.mean) != channels:
            raise UsageError(f"--mean/--std need {channels} value(s), one per channel of the images, got "
                             f"{len(model.mean)}")
        return list(model.mean), list(model.std), "--mean/--std"
    source = model.source
    identity = [0.0] * channels, [1.0] * channels, "none: the model gets [0, 1] pixels (--mean/--std set one)"
    if source.exported:
        return identity
    if model.weights is not None:
        own = weights_normalization(model.weights)
        if own is not None:
            mean, std = own
            if len(mean) == channels:
                return mean, std, f"the normalization saved with {model.weights} (an imgclf model's)"
    if model.weights is not None or model.options.get("pretrained"):
        library = library_preprocessing(source)
        if library is None:
            return identity
        mean, std = list(library.mean), list(library.std)
        if channels != len(mean):  # grey images for a colour network: one channel, the average
            mean, std = [sum(mean) / len(mean)] * channels, [sum(std) / len(std)] * channels
        return mean, std, f"{source.kind}'s metadata for {source.target}"
    return list(data_mean), list(data_std), "the training data's per-channel statistics"


def weights_normalization(path: str | Path) -> tuple[list[float], list[float]] | None:
    """The ``normalize.mean`` and ``normalize.std`` an imgclf model's safetensors file holds (its
    :class:`~imgclf.models.classifier.Normalize` layer), or None for any other file (or one that cannot be
    read: loading the weights says why)."""
    if Path(path).suffix != ".safetensors":
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            if not {"normalize.mean", "normalize.std"} <= keys:
                return None
            mean, std = handle.get_tensor("normalize.mean"), handle.get_tensor("normalize.std")
    except (SafetensorError, OSError):
        return None
    return mean.flatten().tolist(), std.flatten().tolist()


def native_image_size(model: ModelConfig) -> int | None:
    """The input side a library's weights were trained at, for a model with weights (``--weights`` or
    ``pretrained=true``) from timm or torchvision; else None (the data's own size is used)."""
    if model.weights is None and not model.options.get("pretrained"):
        return None
    library = library_preprocessing(model.source)
    return library.image_size if library is not None else None
