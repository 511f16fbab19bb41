"""Trained models on disk: weights in safetensors, everything else in JSON.

``model.safetensors`` holds the state dict (normalization buffers included);
``model.json`` beside it holds what is needed to rebuild the architecture and
use it: model name and hyperparameters, class names, input shape,
normalization, data set and versions. Loading never unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from imgclf.data.containers import DatasetSpec
from imgclf.errors import UsageError, first_line
from imgclf.models import ImageClassifier, Normalize, create_model, resolve_options
from imgclf.record import MODEL_FORMAT, SCHEMA_VERSION, read_model_record
from imgclf.run_folder import atomic_write_bytes, atomic_write_text


def model_info(
    model: torch.nn.Module, name: str, options: dict[str, Any], spec: DatasetSpec, environment: dict[str, Any]
) -> dict[str, Any]:
    """The JSON metadata saved beside the weights (normalization as the model applies it).

    Args:
        model: An :class:`~imgclf.models.ImageClassifier` (its ``normalize`` layer is read).

    Raises:
        TypeError: If ``model`` has no ``normalize`` layer.
    """
    normalize = getattr(model, "normalize", None)
    if not isinstance(normalize, Normalize):
        raise TypeError(f"{type(model).__name__} has no Normalize layer named 'normalize'; create it with "
                        "imgclf.create_model")
    return {
        "schema_version": SCHEMA_VERSION,
        "format": MODEL_FORMAT,
        "model": name,
        "options": resolve_options(name, options),
        "dataset": spec.name,
        "num_classes": spec.num_classes,
        "class_names": list(spec.class_names),
        "input_shape": list(spec.input_shape),
        "input_range": [0.0, 1.0],
        "output": "logits",
        "normalization": {"mean": normalize.mean.flatten().tolist(), "std": normalize.std.flatten().tolist()},
        "versions": environment,
        "saved": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def save_model(model: torch.nn.Module | dict[str, torch.Tensor], weights_path: Path, info: dict[str, Any]) -> None:
    """Write ``weights_path`` (safetensors) and ``weights_path.with_suffix('.json')`` atomically.

    Args:
        model: The model, or its state dict; tensors are copied to the CPU.
        weights_path: Target ``*.safetensors`` file.
        info: Metadata from :func:`model_info`.
    """
    tensors = model if isinstance(model, dict) else model.state_dict()
    state = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    atomic_write_bytes(weights_path, save(state, metadata={"format": MODEL_FORMAT}))
    atomic_write_text(weights_path.with_suffix(".json"), json.dumps(info, indent=2) + "\n")


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    weights = path / "model.safetensors" if path.is_dir() else path
    if weights.suffix != ".safetensors":
        raise UsageError(f"{str(path)!r} is neither a run folder nor a .safetensors file")
    if not weights.is_file():
        raise UsageError(f"no trained model at {str(weights)!r} (has the train stage run?)")
    info = weights.with_suffix(".json")
    if not info.is_file():
        raise UsageError(f"{str(weights)!r} has no metadata file {info.name} beside it")
    return weights, info


def read_model_info(path: str | Path) -> dict[str, Any]:
    """The metadata of a saved model (run folder or ``.safetensors`` path), checked field by field
    (:class:`imgclf.record.ModelInfo`), as a dict.

    Raises:
        UsageError: If the files are missing, ``model.json`` is not JSON, not imgclf's, or a field
            is missing or of the wrong type.
    """
    _, info_path = _paths(path)
    return dataclasses.asdict(read_model_record(info_path))


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> ImageClassifier:
    """Load a trained model from a run folder or a ``model.safetensors`` file.

    Args:
        path: A run folder, or a ``.safetensors`` file with its ``.json`` beside it.
        device: Where to put the model.

    Returns:
        The model in eval mode. Input: ``float32`` ``(B, C, H, W)`` in
        ``[0, 1]`` with ``(C, H, W)`` = ``info["input_shape"]``; output: logits
        ``(B, K)``. Class names are in :func:`read_model_info`.

    Raises:
        UsageError: If the files are missing, not imgclf's, or do not match.
    """
    weights, _ = _paths(path)
    info = read_model_info(path)
    channels, height, width = info["input_shape"]
    norm = info["normalization"]
    try:
        model = create_model(info["model"], channels=channels, image_size=(height, width),
                             num_classes=info["num_classes"], mean=norm["mean"], std=norm["std"],
                             options=info["options"])
    except (ValueError, TypeError, RuntimeError) as error:  # options that build no network, e.g. hidden=-3
        raise UsageError(f"{str(weights.with_suffix('.json'))!r} describes a model that cannot be built "
                         f"({first_line(error)}); restore it from the run that saved it") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise UsageError(f"cannot read weights {str(weights)!r}: {error}") from None
    check_weights(state, model.state_dict(), str(weights))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise UsageError(f"weights in {str(weights)!r} do not fit model {info['model']!r}: {error}") from None
    return model.to(device).eval()


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
    for key, tensor in state.items():
        wanted = expected.get(key)
        if wanted is not None and tensor.dtype != wanted.dtype:
            raise UsageError(f"weights in {file!r}: {key} is {str(tensor.dtype).removeprefix('torch.')}, the model "
                             f"needs {str(wanted.dtype).removeprefix('torch.')}; the file is not this model's")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UsageError(f"weights in {file!r}: {key} holds NaN or infinite values; the model is broken "
                             "(a training run that diverged, or a damaged file): train it again")
