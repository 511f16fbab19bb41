"""Activations of one layer of a trained model, for every split, as a feature file.

``imgclf features RUN --layer NAME --out FILE`` runs the model over the train,
val and test splits it was trained and evaluated on, records the output of
module ``NAME`` (flattened per example), and writes a ``.npz``:

==================  ==========================================================
``train_features``  ``float32`` ``(N_train, D)``; likewise ``val_`` and ``test_``
``train_labels``    ``int64`` ``(N_train,)`` in ``[0, K)``; likewise ``val_`` and ``test_``
``class_names``     ``str`` ``(K,)``
``test_images``     ``uint8`` ``(N_test, C, H, W)``: the test images, for the report
``source``          a JSON string: run folder, model, data set, layer, shapes
==================  ==========================================================

It is read with ``np.load(..., allow_pickle=False)``: no code is unpickled.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgclf.data.batches import iterate_batches
from imgclf.data.containers import ImageSplit
from imgclf.errors import UsageError
from imgclf.run_folder import atomic_write_bytes

#: The default layer: the input of the model's last ``nn.Linear`` (the representation its head classifies).
PENULTIMATE = "penultimate"
SPLITS = ("train", "val", "test")


@dataclass
class FeatureSet:
    """Features (or flattened pixels) and labels of the three splits.

    Attributes:
        train_x, val_x, test_x: ``float32`` ``(N, D)``.
        train_y, val_y, test_y: ``int64`` ``(N,)`` in ``[0, K)``.
        class_names: ``K`` names.
        source: Where the features came from (data set, run folder, layer...).
        test_images: ``uint8`` ``(N_test, C, H, W)`` test images for the
            report's sample predictions, or None.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: list[str]
    source: dict[str, Any] = field(default_factory=dict)
    test_images: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def width(self) -> int:
        """Features per example ``D``."""
        return int(self.train_x.shape[1])


def layer_names(model: nn.Module) -> list[str]:
    """Names accepted by ``--layer``: :data:`PENULTIMATE` and every named submodule, in order."""
    return [PENULTIMATE] + [name for name, _ in model.named_modules() if name]


def _hooked_module(model: nn.Module, layer: str) -> tuple[nn.Module, bool]:
    """The module to hook and whether to take its input (penultimate) rather than its output."""
    if layer == PENULTIMATE:
        linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linear:
            raise UsageError("this model has no linear layer, so it has no 'penultimate' features; name a layer with "
                             "--layer (imgclf features RUN --list-layers shows them)")
        return linear[-1], True
    modules = dict(model.named_modules())
    if not layer or layer not in modules:
        valid = layer_names(model)
        shown = ", ".join(valid[:40]) + (f", ... ({len(valid)} in all)" if len(valid) > 40 else "")
        raise UsageError(f"unknown layer {layer!r}; valid choices: {shown}")
    return modules[layer], False


@torch.no_grad()
def extract_features(model: nn.Module, split: ImageSplit, *, layer: str = PENULTIMATE, device: torch.device,
                     batch_size: int = 512) -> np.ndarray:
    """The activations of ``layer`` for every example of ``split``, in order.

    The model is put in eval mode (dropout off, batch norm on running statistics).

    Args:
        model: Takes ``float32`` ``(B, C, H, W)`` in ``[0, 1]``.
        split: The images.
        layer: A module name from :func:`layer_names`, or :data:`PENULTIMATE`.
        device: Where to run the model.

    Returns:
        ``float32`` ``(N, D)``: each example's activation, flattened.

    Raises:
        UsageError: On an unknown layer (the message lists the valid names).
    """
    module, take_input = _hooked_module(model, layer)
    captured: list[torch.Tensor] = []

    def keep(_module, inputs, output=None):
        value = inputs[0] if take_input else output
        if not isinstance(value, torch.Tensor):
            raise UsageError(f"layer {layer!r} does not output one tensor; choose another layer")
        captured.append(value.detach().float().flatten(1).cpu())  # (B, ...) -> (B, D)

    handle = module.register_forward_pre_hook(keep) if take_input else module.register_forward_hook(keep)
    model.eval()
    try:
        for images, _ in iterate_batches(split, batch_size=batch_size, device=device):
            model(images)
    finally:
        handle.remove()
    return torch.cat(captured).numpy() if captured else np.zeros((0, 0), np.float32)


def features_from_run(run_dir: str | Path, *, layer: str = PENULTIMATE, batch_size: int = 512,
                      overrides: dict | None = None, changed_data: bool = False) -> FeatureSet:
    """Extract ``layer``'s features of every split of a run folder's data (the very splits it used).

    Args:
        changed_data: Go on where the data set changed since the run began (see :meth:`imgclf.Run.open`).

    Raises:
        UsageError: If the folder is not a run, its data cannot be loaded or changed, or the layer is unknown.
    """
    from imgclf.pipeline import Run

    loaded = Run.open(run_dir, overrides=overrides, changed_data=changed_data)
    return _feature_set(
        loaded.data, lambda split: extract_features(loaded.model, split, layer=layer, device=loaded.device,
                                                    batch_size=batch_size),
        {"kind": "features", "run": str(Path(run_dir)), "model": loaded.config.model.name, "layer": layer})


def features_from_pixels(data) -> FeatureSet:
    """Flattened ``[0, 1]`` pixels of a :class:`imgclf.data.DataSplits` as features ``(N, C*H*W)``."""
    return _feature_set(data, lambda split: split.float_images().numpy().reshape(len(split), -1),  # -> (N, C*H*W)
                        {"kind": "pixels"})


def _feature_set(data, features, source: dict[str, Any]) -> FeatureSet:
    """``features(split)`` ``(N, D)`` of each split of ``data`` with its labels, class names and test images;
    ``source`` gains the data set, input shape and width."""
    arrays = {}
    for name in SPLITS:
        split = getattr(data, name)
        arrays[f"{name}_x"] = features(split)
        arrays[f"{name}_y"] = split.labels.numpy().astype(np.int64)
    spec = data.spec
    source = {**source, "dataset": spec.name, "input_shape": list(spec.input_shape),
              "width": int(arrays["train_x"].shape[1])}
    return FeatureSet(**arrays, class_names=list(spec.class_names), source=source,
                      test_images=data.test.uint8_images().numpy())


def feature_path(path: str | Path) -> Path:
    """``path`` with the ``.npz`` suffix added if missing.

    Raises:
        UsageError: If that file exists (a user's file is never overwritten).
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    if path.exists():
        raise UsageError(f"{str(path)!r} already exists; choose another --out (imgclf never overwrites a file)")
    return path


def save_features(features: FeatureSet, path: str | Path) -> Path:
    """Write ``features`` to :func:`feature_path` of ``path`` (``.npz``, see the module docstring) atomically.

    Raises:
        UsageError: If the file exists.
    """
    path = feature_path(path)
    arrays = {f"{name}_{kind}": getattr(features, f"{name}_{short}")
              for name in SPLITS for kind, short in (("features", "x"), ("labels", "y"))}
    if features.test_images is not None:
        arrays["test_images"] = features.test_images
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays, class_names=np.array(features.class_names, dtype=str),
                        source=np.array(json.dumps(features.source)))
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_features(path: str | Path) -> FeatureSet:
    """Read a feature file written by :func:`save_features` (no unpickling).

    Raises:
        UsageError: If the file is missing, not an ``.npz``, or lacks or mis-shapes an array.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"feature file {str(path)!r} does not exist (write one with imgclf features RUN --out FILE)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        raise UsageError(f"{str(path)!r} is not a feature file (.npz without pickled objects): {error}") from None
    needed = [f"{name}_{kind}" for name in SPLITS for kind in ("features", "labels")] + ["class_names"]
    missing = [key for key in needed if key not in arrays]
    if missing:
        raise UsageError(f"{str(path)!r} lacks {', '.join(missing)}; write it with imgclf features")
    values = {}
    for name in SPLITS:
        x, y = arrays[f"{name}_features"], arrays[f"{name}_labels"]
        if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
            raise UsageError(f"{str(path)!r}: {name}_features must be (N, D) and {name}_labels (N,); "
                             f"got {x.shape} and {y.shape}")
        values[f"{name}_x"], values[f"{name}_y"] = x.astype(np.float32, copy=False), y.astype(np.int64)
    source = json.loads(str(arrays["source"])) if "source" in arrays else {}
    return FeatureSet(**values, class_names=[str(c) for c in arrays["class_names"]],
                      source={**source, "file": str(path)}, test_images=arrays.get("test_images"))
