"""Exported models, read whole: ``torch.export`` programs (``.pt2``, checked for pickled payloads first),
TorchScript (``.pt``, ``.ts``) and ONNX (run by ONNX Runtime, without gradients).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from imgclf.errors import UsageError, first_line
from imgclf.lazy import require_module

if TYPE_CHECKING:
    from torch import nn


def load_exported(kind: str, path: str | Path, *, input_shape: tuple[int, int, int] | None = None,
                  trust_code: bool = False) -> nn.Module:
    """An exported model as a module in eval mode: ``float32`` ``(B, C, H, W)`` to the file's outputs.

    Args:
        kind: ``"pt2"`` (``torch.export.load``), ``"torchscript"`` (``torch.jit.load``) or ``"onnx"``
            (ONNX Runtime; the module has ``differentiable = False`` and returns tensors without gradients).
        path: The file.
        input_shape: ``(C, H, W)`` for an ONNX model's checks; unused otherwise.
        trust_code: Load a ``.pt2`` file even where it holds pickled payloads (:func:`check_pt2_archive`).

    Raises:
        UsageError: If the file cannot be read as that kind, or is a ``.pt2`` file with pickled payloads
            and neither ``trust_code`` nor ``--trust-code`` allows it.
    """
    import logging
    import warnings
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no exported model {str(path)!r}")
    if kind == "onnx":
        return onnx_module(path)
    if kind == "pt2":
        check_pt2_archive(path, allowed=trust_code)
    export_log = logging.getLogger("torch.export")  # it logs a traceback of its own for a damaged file
    level = export_log.level
    try:
        export_log.setLevel(logging.CRITICAL)
        with warnings.catch_warnings():  # torch.jit is deprecated in recent torch
            warnings.simplefilter("ignore", FutureWarning)
            if kind == "torchscript":
                module = torch.jit.load(str(path), map_location="cpu")
            else:
                module = torch.export.load(str(path)).module()
    except (RuntimeError, ValueError, OSError, KeyError, EOFError, AssertionError, IndexError, TypeError,
            zipfile.BadZipFile) as error:
        what = "TorchScript" if kind == "torchscript" else "a torch.export program (.pt2)"
        hint = ("; a state dict is not a model: pass it as --weights with its architecture"
                if kind == "torchscript" else "")
        raise UsageError(f"{str(path)!r} cannot be read as {what} ({first_line(error)}){hint}") from None
    finally:
        export_log.setLevel(level)
    if kind == "pt2":
        from imgclf.models.classifier import ExportedGraph

        return ExportedGraph(module).eval()
    return module.eval()


#: Prefixes of ``.pt2`` constants that ``torch.export.load`` unpickles (TorchBind and opaque objects).
_PICKLED_CONSTANTS = ("custom_obj", "opaque_obj")


def check_pt2_archive(path: str | Path, *, allowed: bool = False) -> None:
    """Refuse a ``torch.export`` archive that would make ``torch.export.load`` unpickle Python objects.

    ``torch.export.load`` reads a payload marked ``use_pickle`` (and TorchBind or opaque constants) with
    ``pickle``, and falls back to an unrestricted ``torch.load`` for a ``.pt`` member that the safe
    loader refuses; either can run code that the file's maker chose. This reads the archive first, without
    unpickling anything: every ``*.json`` payload configuration must mark no payload ``use_pickle`` nor name
    a pickled constant, and every ``.pt`` member must load with ``weights_only=True``.

    Args:
        path: The ``.pt2`` file.
        allowed: The caller's opt-in (``trust_code=True``); ``--trust-code`` allows it for the whole process.

    Raises:
        UsageError: If the file is not a zip archive, or holds pickled payloads that are not allowed (the
            message names the first ones and the opt-in).
    """
    import io
    import json
    import pickle
    import warnings
    import zipfile

    import torch

    from imgclf.trust import trusts_everything

    if allowed or trusts_everything():
        return
    pickled: list[str] = []
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                base = member.rsplit("/", 1)[-1]
                if "/constants/" in f"/{member}" and base.startswith(_PICKLED_CONSTANTS):
                    pickled.append(member)
                elif member.endswith(".json") and "/data/" in f"/{member}":
                    try:
                        config = json.loads(archive.read(member)).get("config", {})
                    except (ValueError, AttributeError):
                        continue  # not a payload configuration: torch.export.load judges it
                    entries = config.values() if isinstance(config, dict) else []
                    pickled += [f"{member}: {entry.get('path_name')}" for entry in entries if isinstance(entry, dict)
                                and (entry.get("use_pickle") or str(entry.get("path_name", "")).startswith(
                                    _PICKLED_CONSTANTS))]
                elif member.endswith(".pt"):
                    try:
                        with warnings.catch_warnings():  # (torch warns of the legacy format it is refusing)
                            warnings.simplefilter("ignore")
                            torch.load(io.BytesIO(archive.read(member)), map_location="cpu", weights_only=True)
                    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, AttributeError,
                            TypeError, IndexError, ImportError):
                        pickled.append(member)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise UsageError(f"{str(path)!r} cannot be read as a torch.export program (.pt2): it is not a zip archive "
                         f"({first_line(error)})") from None
    if pickled:
        shown = ", ".join(pickled[:3]) + (f" and {len(pickled) - 3} more" if len(pickled) > 3 else "")
        raise UsageError(f"{str(path)!r} holds pickled Python objects ({shown}), which torch.export.load would "
                         "unpickle and which can run code; imgclf loads such a file only with --trust-code "
                         "(Python: trust_code=True), for a file from someone you trust")


def onnx_module(path: Path) -> nn.Module:
    """An ONNX model run by ONNX Runtime on the CPU, as a module without gradients.

    Raises:
        UsageError: If onnxruntime is missing or the file is not a model it can run.
    """
    import numpy as np
    import torch
    from torch import nn

    ort = require_module("onnxruntime", 'ONNX models need onnxruntime: pip install "imgclf[export]"')
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for a bad file
        raise UsageError(f"{str(path)!r} cannot be read as an ONNX model ({first_line(error)})") from None
    input_name = session.get_inputs()[0].name

    class OnnxModel(nn.Module):
        """An ONNX Runtime session; ``differentiable`` is False: attacks that need gradients are skipped."""

        differentiable = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            output = session.run(None, {input_name: x.detach().cpu().numpy().astype(np.float32)})[0]
            return torch.from_numpy(np.asarray(output, dtype=np.float32)).to(x.device)

    return OnnxModel().eval()
