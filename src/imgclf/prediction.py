"""Predictions on new images from any saved form of a trained model.

:class:`Classifier` loads a run folder, a ``model.safetensors``, an exported ONNX
file (run with ONNX Runtime) or an exported TorchScript file, each with its
metadata (class names, input shape). :func:`predict` decodes image files exactly
as training did (EXIF orientation, mode conversion, transparency onto white,
resizing; :func:`imgclf.data.folder.decode_image`), batches them, and returns
the top-k classes with softmax probabilities. A file that cannot be read gets
its error in its own result; the others are still predicted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclf.data.folder import DECODE_ERRORS, decode_image, list_image_files
from imgclf.errors import UsageError
from imgclf.record import export_info_path, load_json, read_model_record


@dataclass
class Prediction:
    """The top-k classes of one image.

    Attributes:
        file: The image file (None for tensor input).
        classes: Class names, most probable first (empty on error).
        probabilities: Softmax probabilities in ``[0, 1]``, same order.
        error: Why the file could not be predicted, or None.
    """

    file: str | None
    classes: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Classifier:
    """A trained classifier, whatever form it was saved in.

    Use :meth:`load`. :meth:`logits` maps ``float32`` ``(N, C, H, W)`` images in
    ``[0, 1]`` to logits ``(N, K)``.

    Attributes:
        info: The model's metadata (``class_names``, ``input_shape``, ...).
        kind: ``"pytorch"``, ``"onnx"`` or ``"torchscript"``.
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], info: dict[str, Any], kind: str):
        self._forward, self.info, self.kind = forward, info, kind

    @property
    def class_names(self) -> list[str]:
        return list(self.info["class_names"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.info["input_shape"]
        return int(channels), int(height), int(width)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device | None = None,
             trust_code: bool = False) -> Classifier:
        """Load a run folder, ``*.safetensors``, ``*.onnx`` or exported TorchScript file.

        Args:
            trust_code: Import the code of a ``py:`` model the folder names, and load a ``.pt2`` file with
                pickled payloads (:mod:`imgclf.trust`).

        Raises:
            UsageError: If the path is none of these, its metadata is missing, or it names code that is
                not trusted.
        """
        path = Path(path)
        if (path.suffix == ".onnx" and not path.is_dir()) or (path.is_file() and export_info_path(path).is_file()):
            info_path = export_info_path(path)
            if not info_path.is_file():
                raise UsageError(f"{str(path)!r} has no metadata file {info_path.name} beside it")
            read_model_record(info_path)  # the model fields, checked
            info = load_json(info_path, "export the model again")
            kind = info.get("export_format")
            if kind in ("onnx", "torchscript", "pt2"):
                from imgclf.models.exported import load_exported

                module = load_exported(kind, path, trust_code=trust_code)
                return cls(_torch_forward(module, torch.device("cpu")), info, kind)
            raise UsageError(f"{str(info_path)!r} names no export format imgclf knows (onnx, torchscript, pt2)")
        from imgclf.checkpoint import load_model, read_model_info
        from imgclf.runtime import select_device

        target = select_device("auto") if device is None else torch.device(device)
        model = load_model(path, device=target, trust_code=trust_code)
        return cls(_torch_forward(model, target), read_model_info(path), "pytorch")

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, K)`` (CPU, float32) of ``float32`` images ``(N, C, H, W)`` in ``[0, 1]``."""
        if tuple(images.shape[1:]) != self.input_shape:
            raise UsageError(f"the model expects images of shape {self.input_shape}, got {tuple(images.shape[1:])}")
        return self._forward(images)


def _torch_forward(module: torch.nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    @torch.no_grad()
    def forward(images: torch.Tensor) -> torch.Tensor:
        return module(images.to(device)).float().cpu()

    return forward


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files given, and the image files inside folders given (recursively, hidden ones skipped)."""
    found: list[Path] = []
    for path in map(Path, paths):
        # A file named explicitly is predicted, or reported if it is not an image.
        found += list_image_files(path) if path.is_dir() else [path]
    return found


def _top_k(logits: torch.Tensor, names: Sequence[str], k: int) -> list[tuple[list[str], list[float]]]:
    probabilities = logits.float().softmax(dim=1)
    values, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return [([names[i] for i in row_i], [float(v) for v in row_v])
            for row_i, row_v in zip(indices.tolist(), values.tolist(), strict=True)]


def predict(
    model: Classifier | torch.nn.Module | str | Path,
    images: torch.Tensor | Sequence[str | Path],
    *,
    top_k: int = 1,
    batch_size: int = 256,
    class_names: Sequence[str] | None = None,
) -> list[Prediction]:
    """Top-k predictions for images.

    Args:
        model: A :class:`Classifier`, a trained ``nn.Module`` (pixel-space input,
            logits out), or a path :meth:`Classifier.load` accepts.
        images: ``float32`` tensor ``(N, C, H, W)`` in ``[0, 1]``, or image files
            and folders (decoded as in training, to the model's input shape).
        top_k: Classes per image, most probable first.
        batch_size: Images per forward pass.
        class_names: Names for a bare ``nn.Module`` (default ``"0"``, ``"1"``, ...).

    Returns:
        One :class:`Prediction` per image, in order (folders expanded, sorted).

    Raises:
        UsageError: If ``top_k < 1`` or the model cannot be loaded.
    """
    if top_k < 1:
        raise UsageError(f"top_k must be a positive integer, got {top_k}")
    if isinstance(model, (str, Path)):
        model = Classifier.load(model)
    if isinstance(model, torch.nn.Module):
        device = next(model.parameters()).device
        module = model.eval()
        forward, names = _torch_forward(module, device), list(class_names or [])
    else:
        forward, names = model.logits, model.class_names
    if isinstance(images, torch.Tensor):
        logits = torch.cat([forward(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
        names = names or [str(k) for k in range(logits.shape[1])]
        return [Prediction(None, c, p) for c, p in _top_k(logits, names, top_k)]
    if not isinstance(model, Classifier):
        raise UsageError("predicting image files needs a Classifier or a saved model (its input shape)")
    channels, height, width = model.input_shape
    results = [Prediction(str(path)) for path in image_files(images)]
    pending: list[tuple[Prediction, np.ndarray]] = []

    def flush() -> None:
        if pending:
            batch = torch.from_numpy(np.stack([array for _, array in pending])).float().div_(255.0)
            for (result, _), (classes, probs) in zip(pending, _top_k(forward(batch), names, top_k), strict=True):
                result.classes, result.probabilities = classes, probs
            pending.clear()

    for result in results:
        path = Path(str(result.file))
        if not path.exists():
            result.error = "no such file"
            continue
        try:
            pending.append((result, decode_image(path, channels=channels, size=(height, width))))
        except DECODE_ERRORS as error:
            result.error = f"{type(error).__name__}: {error}"
        if len(pending) == batch_size:
            flush()
    flush()
    return results
