"""``timm:<name>``: any model of the timm library (Wightman, PyTorch Image Models).

timm is optional (``pip install "imgclf[timm]"``). The input channels and the number
of classes are adapted by timm itself (``in_chans``, ``num_classes``; pretrained
first-layer weights are summed or repeated to fit the channels, and the head is
new). With ``pretrained=true`` the published weights are fetched from the Hugging
Face Hub, and the model normalizes with the mean and std those weights were
trained with.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

from imgclf.errors import UsageError, first_line

PREFIX = "timm:"


def timm_builder(model_name: str) -> Callable[..., nn.Module]:
    """A registry builder for timm model ``model_name`` (see :func:`imgclf.models.create_model`)."""

    def build(*, channels: int, image_size: tuple[int, int], num_classes: int,
              pretrained: bool = False) -> nn.Module:
        try:
            import timm
        except ImportError:
            raise UsageError('timm models need the timm package: pip install "imgclf[timm]"') from None
        if not timm.is_model(model_name):
            close = difflib.get_close_matches(model_name, timm.list_models(), n=8, cutoff=0.7)
            hint = f"; similar names: {', '.join(close)}" if close else "; see timm.list_models()"
            raise UsageError(f"unknown timm model {model_name!r}{hint}")
        try:
            return timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes, in_chans=channels)
        except OSError as error:  # huggingface_hub's "not found / no connection" errors are OSErrors
            raise UsageError(
                f"the pretrained weights of timm model {model_name!r} could not be fetched ({type(error).__name__}: "
                f"{first_line(error)}); connect to the Hugging Face Hub, set HF_HUB_CACHE to a "
                "folder that holds them, or train without --model-option pretrained=true"
            ) from None

    build.__doc__ = f"timm model {model_name!r}."
    return build
