"""Trained models on disk: weights in safetensors, everything else in JSON.

``model.safetensors`` holds the state dict (normalization buffers included);
``model.json`` beside it holds what is needed to rebuild the architecture and
use it: model name and hyperparameters, class names, input shape,
normalization, data set and versions. Loading never unpickles anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from imgclf.config import ModelConfig
from imgclf.data.containers import DatasetSpec
from imgclf.errors import UsageError, first_line
from imgclf.models.classifier import ImageClassifier, Normalize
from imgclf.models.exported import load_exported
from imgclf.models.factory import create_model
from imgclf.models.normalization import normalization
from imgclf.models.registry import resolve_options
from imgclf.models.source import ModelSource
from imgclf.models.weights import check_weights, file_digest
from imgclf.record import MODEL_FORMAT, SCHEMA_VERSION, export_info_path, read_model_record
from imgclf.run_folder import atomic_write_bytes, atomic_write_text
from imgclf.trust import check_named_code


def model_info(
    model: torch.nn.Module, name: str | ModelSource, options: dict[str, Any], spec: DatasetSpec,
    environment: dict[str, Any],
    *, source: dict[str, Any] | None = None, initial_weights: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON metadata saved beside the weights (normalization as the model applies it).

    Args:
        model: An :class:`~imgclf.models.ImageClassifier` (its ``normalize`` layer is read).
        source: Where a model imgclf did not train came from (:class:`imgclf.record.ModelInfo`'s ``source``).
        initial_weights: The weights a trained model started from (``ModelInfo.initial_weights``).

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
        "model": name if isinstance(name, str) else name.name,
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
        "source": source or {},
        "initial_weights": initial_weights or {},
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
    """The weights file (or, for an exported model evaluated in a run folder, its copy) and ``model.json``."""
    path = Path(path)
    if path.is_dir() and not (path / "model.safetensors").is_file() and (path / "model.json").is_file():
        return path / "model.safetensors", path / "model.json"  # an exported model's run: model.json names its file
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


def load_model(path: str | Path, *, device: str | torch.device = "cpu", trust_code: bool = False) -> torch.nn.Module:
    """Load a model from a run folder or a ``model.safetensors`` file.

    A model of a library or of the user's code (``timm:``, ``torchvision:``, ``py:``) is rebuilt from
    ``model.json`` (its module must be importable); an exported model evaluated in a run folder is read from
    its copy there. Nothing is unpickled, and a ``py:`` model's code is imported only with ``trust_code``
    (or where this process was told to trust it: :mod:`imgclf.trust`).

    Args:
        path: A run folder, or a ``.safetensors`` file with its ``.json`` beside it.
        device: Where to put the model.
        trust_code: Import the Python code a ``py:`` model names, and load a ``.pt2`` copy that holds
            pickled payloads: only for a folder from someone you trust.

    Returns:
        The model in eval mode. Input: ``float32`` ``(B, C, H, W)`` in
        ``[0, 1]`` with ``(C, H, W)`` = ``info["input_shape"]``; output: logits
        ``(B, K)``. Class names are in :func:`read_model_info`.

    Raises:
        UsageError: If the files are missing, not imgclf's, do not match, the model's code cannot be
            imported, or it names code (or pickled payloads) that is not trusted.
    """
    weights, info_path = _paths(path)
    info = read_model_info(path)
    check_named_code(info["model"], str(info_path), allowed=trust_code)
    channels, height, width = info["input_shape"]
    norm = info["normalization"]
    source = info["source"]
    if source.get("file"):  # an exported model: its copy in the run folder
        exported = load_exported(source.get("kind", ""), info_path.parent / Path(source["file"]).name,
                                 trust_code=trust_code)
        model = ImageClassifier(Normalize(norm["mean"], norm["std"]), exported) if source.get("normalize") \
            else exported
        return model.to(device)
    options = {**info["options"], **({"pretrained": False} if "pretrained" in info["options"] else {})}
    try:  # (the weights come from the file, never again from a hub)
        model = create_model(info["model"], channels=channels, image_size=(height, width),
                             num_classes=info["num_classes"], mean=norm["mean"], std=norm["std"], options=options)
    except (ValueError, TypeError, RuntimeError) as error:  # options that build no network, e.g. hidden=-3
        if source:  # a library or the user's code that is not importable here
            raise UsageError(f"{str(info_path)!r} names {info['model']!r}, which cannot be built here: "
                             f"{first_line(error, 300)}") from None
        raise UsageError(f"{str(weights.with_suffix('.json'))!r} describes a model that cannot be built "
                         f"({first_line(error)}); restore it from the run that saved it") from None
    if not weights.is_file():
        raise UsageError(f"no trained model at {str(weights)!r} (has the train stage run?)")
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


def external_model(model: ModelConfig, spec: DatasetSpec, environment: dict[str, Any]
                   ) -> tuple[torch.nn.Module, dict[str, Any], Path | None]:
    """A model imgclf did not train, ready to evaluate on ``spec``'s images, with its ``model.json``.

    An architecture (registered, ``timm:``, ``torchvision:``, ``py:``) is built and given ``model.weights``
    (or the library's ``pretrained`` weights); an exported file (``.pt2``, TorchScript, ``.onnx``) is read
    whole. Normalization follows :func:`imgclf.models.normalization.normalization` and is applied inside the
    model, so eps stays in pixel units; an exported imgclf model (with its ``FILE.json``) holds its own.

    Args:
        model: The ``model`` settings (``name``, ``options``, ``weights``, ``mean``, ``std``).
        spec: The data the model is evaluated on: its channels, image size and classes.
        environment: Versions and device, for ``model.json``.

    Returns:
        The model (eval mode, CPU; ``float32`` ``(B, C, H, W)`` in ``[0, 1]`` to ``(B, K)``), the
        ``model.json`` dict, and the exported file to copy into the run folder (None for an architecture).

    Raises:
        UsageError: If the model cannot be built or read, its weights do not fit, it has no weights at all,
            or it does not map the data's images to one output per class.
    """
    source = model.source
    mean, std, origin = normalization(model, channels=spec.channels, data_mean=spec.mean, data_std=spec.std)
    record: dict[str, Any] = {"kind": source.kind, "given": model.name, "normalization": origin}
    exported_file = None
    if source.exported:
        if model.weights is not None or model.options:
            raise UsageError(f"{model.name!r} is an exported model that holds its weights and settings: drop "
                             "--weights and --model-option")
        exported_file = Path(source.target)
        body = load_exported(source.kind, exported_file)
        own = export_info_path(exported_file)
        wrap = model.mean is not None or not own.is_file()
        if not wrap:  # imgclf's export: the normalization is inside, as its FILE.json says
            normalization_inside = read_model_record(own).normalization
            mean, std, origin = normalization_inside.mean, normalization_inside.std, f"inside the file ({own.name})"
            record["normalization"] = origin
        record.update(file=f"model{_exported_suffix(exported_file)}", original=str(exported_file.resolve()),
                      sha256=file_digest(exported_file), normalize=wrap)
        network: torch.nn.Module = ImageClassifier(Normalize(mean, std), body) if wrap else body
    else:
        if model.weights is None and not model.options.get("pretrained"):
            raise UsageError(f"--model {model.name} has no weights to evaluate: give --weights FILE"
                             + (" or --model-option pretrained=true" if source.kind in ("timm", "torchvision")
                                else "") + ", or train it with imgclf run")
        network = create_model(source, channels=spec.channels, image_size=spec.image_size,
                               num_classes=spec.num_classes, mean=mean, std=std, options=model.options,
                               weights=model.weights)
        if model.weights is not None:
            record["weights"] = str(Path(model.weights).resolve())
    network.eval()
    check_outputs(network, spec, name=model.name)
    if exported_file is None:
        info = model_info(network, source, model.options, spec, environment, source=record)
    else:
        info = {"schema_version": SCHEMA_VERSION, "format": MODEL_FORMAT, "model": model.name, "options": {},
                "dataset": spec.name, "num_classes": spec.num_classes, "class_names": list(spec.class_names),
                "input_shape": list(spec.input_shape), "input_range": [0.0, 1.0], "output": "logits",
                "normalization": {"mean": list(mean), "std": list(std)}, "versions": environment,
                "saved": datetime.now(UTC).isoformat(timespec="seconds"), "source": record}
    return network, info, exported_file


def _exported_suffix(path: Path) -> str:
    return ".torchscript.pt" if path.name.endswith(".torchscript.pt") else path.suffix.lower()


def check_outputs(network: torch.nn.Module, spec: DatasetSpec, *, name: str, gradients: bool = False) -> None:
    """One forward pass on two blank images, in eval mode (the module's mode is restored): the model must take
    the data's shape and give finite logits ``(2, K)``; with ``gradients``, logits that autograd can follow
    back to the parameters (a model to train).

    Args:
        name: The model as the user named it, for the messages.

    Raises:
        UsageError: Naming the model and what it did wrong (an option that builds no working network, such
            as ``filters=0``, fails here).
    """
    probe = torch.zeros(2, *spec.input_shape, device=next(network.parameters(), torch.zeros(0)).device)
    was_training = network.training
    network.eval()
    try:
        with torch.set_grad_enabled(gradients):
            out = network(probe)
    except (RuntimeError, ValueError, TypeError, IndexError, ZeroDivisionError) as error:
        raise UsageError(f"the model {name} cannot take the data's images of shape {list(spec.input_shape)} "
                         f"({type(error).__name__}: {first_line(error)}); check its --model-option values, or set "
                         "--image-size and --channels to what it expects") from None
    finally:
        network.train(was_training)
    if not isinstance(out, torch.Tensor) or out.shape != (2, spec.num_classes):
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(f"the model {name} gives {shape} for 2 images; it must give logits [2, {spec.num_classes}], "
                         f"one per class of {spec.name}")
    if not bool(torch.isfinite(out).all()):
        raise UsageError(f"the model {name} gives NaN or infinite logits for blank images; it is broken (its "
                         "weights, or a division in its forward pass)")
    if gradients and not out.requires_grad:
        raise UsageError(f"the logits of the model {name} do not depend on any parameter autograd can follow (does "
                         "its forward run under torch.no_grad(), or detach?); it cannot be trained")


def save_external(folder: Path, network: torch.nn.Module, info: dict[str, Any], exported: Path | None) -> None:
    """Write an evaluated model into run folder ``folder``: ``model.safetensors`` and ``model.json`` for an
    architecture; for an exported model a copy of its file (as ``model.json``'s ``source.file`` names it)
    and ``model.json``. Every write is atomic."""
    if exported is None:
        save_model(network, folder / "model.safetensors", info)
        return
    atomic_write_bytes(folder / info["source"]["file"], exported.read_bytes())
    atomic_write_text(folder / "model.json", json.dumps(info, indent=2) + "\n")


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's structure (module names and types) and of every tensor of its state dict."""
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        digest.update(f"{name}:{type(module).__qualname__};".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
