"""Run a model over a split and turn its predictions into metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from imgclf.data.batches import iterate_batches
from imgclf.data.containers import ImageSplit
from imgclf.metrics import ClassificationMetrics, classification_metrics


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, split: ImageSplit, *, batch_size: int = 512, device: torch.device,
    tta: bool = False,
) -> torch.Tensor:
    """Logits of ``model`` for every example of ``split``, in order.

    The caller chooses the model's mode (``model.eval()`` for evaluation).

    Args:
        tta: Test-time augmentation: the mean of the logits of each image and
            of its left-right mirror.

    Returns:
        ``float32`` tensor of shape ``(N, K)`` on the CPU.
    """
    outputs = []
    for images, _ in iterate_batches(split, batch_size=batch_size, device=device):
        logits = model(images).float()
        if tta:
            logits = (logits + model(images.flip(3)).float()) / 2
        outputs.append(logits.cpu())
    return torch.cat(outputs)


@torch.no_grad()
def logits_of(model: torch.nn.Module, images: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """``model``'s logits for ``images`` in batches: ``float32`` ``(N, C, H, W)`` in ``[0, 1]`` on any device in,
    ``float32`` ``(N, K)`` on the CPU out. Batches go to the model's device; the caller chooses its mode."""
    device = next(model.parameters(), torch.empty(0)).device
    return torch.cat([model(images[i:i + batch_size].to(device)).float().cpu()
                      for i in range(0, len(images), batch_size)])


def loss_and_accuracy(
    model: torch.nn.Module, split: ImageSplit, *, batch_size: int, device: torch.device
) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of ``model`` on ``split`` (model left as given)."""
    logits = predict_logits(model, split, batch_size=batch_size, device=device)
    loss = F.cross_entropy(logits, split.labels).item()
    accuracy = int((logits.argmax(1) == split.labels).sum()) / len(split)
    return loss, accuracy


@dataclass
class EvalResult:
    """The evaluate stage's output.

    Attributes:
        metrics: Clean metrics on the test split.
        predictions: ``int64`` ``(N,)`` predicted class per test example.
        probabilities: ``float32`` ``(N, K)`` softmax of the logits.
        seconds: Wall time of the evaluation.
        logits: ``float32`` ``(N, K)``: the model's logits (averaged with the mirror's under ``tta``).
    """

    metrics: ClassificationMetrics
    predictions: np.ndarray
    probabilities: np.ndarray
    seconds: float
    logits: np.ndarray

    def _repr_html_(self) -> str:
        """The clean metrics and per-class report (Jupyter shows this; the arrays stay attributes)."""
        shown = self.metrics.html("Clean test metrics")
        shown.facts.append(f"{self.seconds:.1f} s")
        return shown.render()

    def __repr__(self) -> str:
        return f"EvalResult(accuracy={self.metrics.accuracy:.4f}, n={self.metrics.n}, seconds={self.seconds:.1f})"


def evaluate(
    model: torch.nn.Module,
    split: ImageSplit,
    class_names: list[str],
    *,
    device: torch.device,
    batch_size: int = 512,
    tta: bool = False,
) -> EvalResult:
    """Clean metrics of ``model`` on ``split`` (accuracy, top-5 accuracy above 5 classes, macro F1,
    per class...).

    The model is put in eval mode. ``tta`` averages the logits of each image
    and its mirror (see :func:`predict_logits`).
    """
    start = time.perf_counter()
    model.eval()
    logits = predict_logits(model, split, batch_size=batch_size, device=device, tta=tta)
    predictions = logits.argmax(1).numpy()
    metrics = classification_metrics(split.labels.numpy(), predictions, class_names, scores=logits.numpy())
    return EvalResult(metrics, predictions, logits.softmax(1).numpy(), time.perf_counter() - start, logits.numpy())
