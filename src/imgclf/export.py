"""Export a trained model to ONNX, TorchScript or a ``torch.export`` program (``.pt2``), and prove the
export right.

The exported model contains the normalization layer: its input is ``float32``
``(B, C, H, W)`` in ``[0, 1]`` with a dynamic batch size, its output logits
``(B, K)``. The model's metadata (class names, input shape, normalization,
versions) is written beside it as ``FILE.json``. Before the export is reported
as a success, the exported file is loaded again (ONNX Runtime, ``torch.jit.load``
or ``torch.export.load``) and must give the same logits as PyTorch on real test
images: max absolute difference <= ``tolerance`` (default 1e-4). A failed check
leaves no file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from imgclf.errors import ExportMismatchError, UsageError
from imgclf.prediction import Classifier
from imgclf.record import export_info_path
from imgclf.run_folder import FILE_MODE, atomic_write_text

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "pt2": ".pt2"}


@dataclass
class ExportResult:
    """Where the export went and how closely it matches PyTorch."""

    path: Path
    format: str
    max_abs_diff: float
    n_images: int
    same_top1: float  # share of the images with the same top-1 class
    tolerance: float


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        import onnx  # noqa: F401  (imported only to check that the export extra is installed)
        import onnxscript  # noqa: F401  (as above)
    except ImportError:
        raise UsageError('ONNX export needs onnx and onnxscript: pip install "imgclf[export]"') from None
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's progress chatter and deprecation notes
        torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=["images"],
                          output_names=["logits"], dynamic_shapes={"x": {0: batch}}, external_data=False,
                          verbose=False, report=False)


def _export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():  # TorchScript is deprecated in recent torch, but still what many runtimes load
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
        traced.save(str(path))


def _export_program(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """A ``torch.export`` program (``.pt2``): the graph and weights, loadable without the model's code and
    differentiable (white-box attacks run on it)."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(path))


_EXPORTERS = {"onnx": _export_onnx, "torchscript": _export_torchscript, "pt2": _export_program}


def export_model(
    model: torch.nn.Module,
    info: dict,
    images: torch.Tensor,
    path: str | Path,
    *,
    format: str = "onnx",
    tolerance: float = 1e-4,
) -> ExportResult:
    """Export ``model`` and check the exported file against it.

    Args:
        model: An imgclf model (normalization inside, logits out); put in eval mode.
        info: Its metadata (from :func:`imgclf.checkpoint.read_model_info`).
        images: Real test images for the parity check, ``float32``
            ``(N, C, H, W)`` in ``[0, 1]``, ``N >= 2``.
        path: The file to write; it must not exist yet.
        format: ``"onnx"``, ``"torchscript"`` or ``"pt2"`` (``torch.export``).
        tolerance: Largest allowed absolute difference of any logit.

    Returns:
        The path, the largest logit difference and the top-1 agreement.

    Raises:
        UsageError: Unknown format, an existing file, or a missing exporter.
        ExportMismatchError: If the exported model disagrees with PyTorch.
    """
    if format not in FORMATS:
        raise UsageError(f"unknown export format {format!r}; valid choices: {', '.join(FORMATS)}")
    path = Path(path)
    if path.exists() or export_info_path(path).exists():
        raise UsageError(f"{str(path)} already exists; choose another --out (imgclf never overwrites a file)")
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    images = images.cpu().float()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=FORMATS[format])
    os.close(fd)
    tmp = Path(tmp_name)
    tmp_info = export_info_path(tmp)
    try:
        _EXPORTERS[format](model, images[:2], tmp)
        meta = {**info, "export_format": format, "input_name": "images", "output_name": "logits",
                "dynamic_batch": True}
        atomic_write_text(tmp_info, json.dumps(meta, indent=2) + "\n")
        exported = Classifier.load(tmp)
        with torch.no_grad():
            expected = model(images)
        got = exported.logits(images)
        diff = float((got - expected).abs().max())
        same = float((got.argmax(1) == expected.argmax(1)).float().mean())
        if not diff <= tolerance:
            raise ExportMismatchError(
                f"the {format} export differs from PyTorch by up to {diff:.2e} in the logits on "
                f"{len(images)} test images (tolerance {tolerance:.0e}); nothing was written"
            )
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
        os.replace(tmp_info, export_info_path(path))
    finally:
        tmp.unlink(missing_ok=True)
        tmp_info.unlink(missing_ok=True)
    return ExportResult(path, format, diff, len(images), same, tolerance)
