"""Weights from a file, for an architecture: safetensors, or a PyTorch state dict read with
``weights_only=True``; checked against the model before they are copied in. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from imgclf.errors import UsageError, first_line

if TYPE_CHECKING:
    import torch
    from torch import nn

#: Keys under which checkpoints of common training scripts nest their state dict.
NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: safetensors, or a PyTorch file read with ``weights_only=True`` (a
    state dict, possibly nested under ``state_dict``/``model_state_dict``/``model``/``net``; a ``module.``
    prefix left by DistributedDataParallel is removed).

    Raises:
        UsageError: If the file is missing, cannot be read without unpickling code, or holds no tensors.
    """
    import pickle

    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no weights file {str(path)!r}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise UsageError(f"cannot read weights {str(path)!r}: {first_line(error)}") from None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UsageError(f"{str(path)!r} holds Python objects other than tensors; imgclf loads weights with "
                         "weights_only=True and never unpickles code: save model.state_dict() instead") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise UsageError(f"cannot read weights {str(path)!r} ({first_line(error)}); give a .safetensors file or "
                         "a state dict saved with torch.save") from None
    for key in NESTED_STATE_KEYS:
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise UsageError(f"{str(path)!r} is not a state dict (a mapping of names to tensors)")
    if all(key.startswith("module.") for key in raw):
        raw = {key[len("module."):]: value for key, value in raw.items()}
    return raw


def load_weights(body: nn.Module, path: str | Path, *, new_head: bool = False) -> list[str]:
    """Copy the weights of ``path`` (see :func:`read_state_dict`) into ``body``, strictly.

    The weights of an imgclf run (``RUN/model.safetensors``: ``normalize.*`` and ``body.*``) give their
    ``body.*`` tensors.

    Args:
        new_head: Fine-tuning: the classifier head (:func:`imgclf.models.classifier.classifier_head`)
            may be missing from the weights or hold another number of classes; it then keeps its fresh
            initialization. Every other tensor must still fit.

    Returns:
        The keys of ``body`` left at their initialization (``[]`` unless ``new_head``).

    Raises:
        UsageError: If names or shapes differ (the first differing keys are listed), or a tensor has the wrong
            dtype or holds NaN or infinity.
    """
    from imgclf.models.classifier import classifier_head

    state = read_state_dict(path)
    expected = body.state_dict()
    if not any(key in expected for key in state) and all(key.startswith(("normalize.", "body.")) for key in state):
        state = {key.removeprefix("body."): value for key, value in state.items() if key.startswith("body.")}
    fresh: list[str] = []
    if new_head:
        head = classifier_head(body)
        in_head = [key for key in expected if key.startswith(head + ".")]
        fresh = [key for key in in_head if key not in state or state[key].shape != expected[key].shape]
        if fresh:  # the weights' head is another task's: all of it stays fresh
            fresh = in_head
            state = {key: value for key, value in state.items() if not key.startswith(head + ".")}
    missing = [key for key in expected if key not in state and key not in fresh]
    unexpected = [key for key in state if key not in expected]
    shapes = [f"{key} {tuple(state[key].shape)} (model {tuple(expected[key].shape)})"
              for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or unexpected or shapes:
        parts = [f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} ({len(keys)})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", shapes))
                 if keys]
        raise UsageError(f"the weights in {str(path)!r} do not fit the model: {'; '.join(parts)}")
    check_weights(state, expected, str(path))
    body.load_state_dict({**{key: expected[key] for key in fresh}, **state}, strict=True)
    return fresh


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_weights(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], file: str) -> None:
    """Check loaded weights against the model they are for, before they are copied in.

    Args:
        state: The tensors read from ``file``.
        expected: The model's own state dict (names, shapes and dtypes to match).

    Raises:
        UsageError: If a tensor has another dtype than the model's (integers where floats belong,
            which ``load_state_dict`` would silently convert), or a floating tensor holds NaN or
            infinity (a model broken by a diverged training run or a damaged file).
    """
    import torch

    for key, tensor in state.items():
        wanted = expected.get(key)
        if wanted is not None and tensor.dtype != wanted.dtype:
            raise UsageError(f"weights in {file!r}: {key} is {str(tensor.dtype).removeprefix('torch.')}, the model "
                             f"needs {str(wanted.dtype).removeprefix('torch.')}; the file is not this model's")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UsageError(f"weights in {file!r}: {key} holds NaN or infinite values; the model is broken "
                             "(a training run that diverged, or a damaged file): train it again")
