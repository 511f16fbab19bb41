"""The layers every imgclf model is made of: :class:`ImageClassifier` (:class:`Normalize` in front of an
architecture's body, built by :func:`imgclf.models.factory.create_model`), the wrappers of library and exported
networks, and what can be asked of any model (:func:`classifier_head`, :func:`differentiable`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from imgclf.errors import UsageError, first_line


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


def differentiable(model: nn.Module) -> bool:
    """Whether gradients of ``model``'s logits reach its input (False for an ONNX model and any module that
    says ``differentiable = False``, including inside an :class:`ImageClassifier`)."""
    return all(getattr(module, "differentiable", True) for module in model.modules())
