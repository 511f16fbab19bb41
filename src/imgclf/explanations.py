"""What the model looks at: Grad-CAM heat maps for convolutional models, input-gradient saliency for the rest.

- **Grad-CAM** (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
  Localization", ICCV 2017): the activations of a convolutional layer weighted by the spatially averaged
  gradient of the target class's logit, summed over channels, kept where positive, and upsampled
  (bilinear) to the input's size. The layer is the model's last ``Conv2d`` unless one is named.
- **Saliency** (Simonyan, Vedaldi and Zisserman, "Deep Inside Convolutional Networks", 2014): the absolute
  gradient of the target logit with respect to the input pixels, the largest over the colour channels;
  for models without such a convolution (MLPs) and for transformers (a ViT's one convolution cuts the
  image into patches; its Grad-CAM would show the patch grid) unless a layer is named.

Both come from Captum. Each map is scaled to
``[0, 1]`` by its own maximum (an all-zero map stays zero), so maps show where, not how much.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imgclf.errors import UsageError

METHODS = ("auto", "grad-cam", "saliency")


@dataclass
class Explanation:
    """Heat maps of a batch.

    Attributes:
        maps: ``float32`` ``(N, H, W)`` in ``[0, 1]``, the input's spatial size; each map divided by its
            maximum.
        targets: ``int64`` ``(N,)``, the classes explained.
        method: ``"grad-cam"`` or ``"saliency"``. layer: The module Grad-CAM used (its name in
            ``model.named_modules()``), or None.
    """

    maps: torch.Tensor
    targets: torch.Tensor
    method: str
    layer: str | None


def grad_cam_layer(model: torch.nn.Module, images: torch.Tensor) -> str | None:
    """The layer Grad-CAM uses by default: the last module (in the order the forward pass finishes them) that
    runs once per pass and gives a feature map of at least 4x4, among those after the first convolution: the
    output of the last convolutional block, activation and pooling included (a ResNet stage, a VGG-style
    block's pooling), as Grad-CAM is usually applied. None for a model without a convolution, or with
    attention layers (a transformer).

    Args:
        images: ``(N, C, H, W)`` on the model's device: one forward pass finds the output sizes.
    """
    modules = dict(model.named_modules())
    if any(isinstance(m, torch.nn.MultiheadAttention) for m in modules.values()):
        return None
    finished: list[tuple[str, tuple[int, ...]]] = []  # (name, output shape), in the order the modules finish

    def recorder(name: str):
        def record(_module: torch.nn.Module, _inputs: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor):
                finished.append((name, tuple(output.shape)))
        return record

    hooks = [module.register_forward_hook(recorder(name)) for name, module in modules.items() if name]
    try:
        with torch.no_grad():
            model(images[:1])
    finally:
        for hook in hooks:
            hook.remove()
    calls = {name: sum(n == name for n, _ in finished) for name, _ in finished}
    first_conv = next((i for i, (name, _) in enumerate(finished) if isinstance(modules[name], torch.nn.Conv2d)), None)
    if first_conv is None:
        return None
    maps = [name for name, shape in finished[first_conv:]
            if len(shape) == 4 and min(shape[2:]) >= 4 and calls[name] == 1]
    return maps[-1] if maps else None


def _captum():
    try:
        import captum.attr
    except ImportError:
        raise UsageError("explanations need Captum, one of imgclf's dependencies: pip install captum") from None
    return captum.attr


def explain(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor | None = None, *,
            method: str = "auto",  # auto: Grad-CAM where grad_cam_layer finds a layer, else saliency
            layer: str | None = None,  # Grad-CAM's layer; None: grad_cam_layer's choice
            ) -> Explanation:
    """Heat maps of where ``model`` looks for ``targets`` in ``images``.

    Args:
        model: ``[0, 1]`` images in, logits out; used in its current mode (put it in eval mode) and left
            unchanged (in-place activations are made out-of-place while it runs, then restored).
        images: ``float32`` ``(N, C, H, W)`` in ``[0, 1]`` on the model's device.
        targets: ``int64`` ``(N,)`` classes to explain; None: each image's predicted class.

    Returns:
        The :class:`Explanation`.

    Raises:
        UsageError: On an unknown method or layer, Grad-CAM asked of a model without a convolution, or
            Captum missing.
    """
    if method not in METHODS:
        raise UsageError(f"unknown explanation method {method!r}; choose from {', '.join(METHODS)}")
    attr = _captum()
    images = images.detach()
    if targets is None:
        with torch.no_grad():
            targets = model(images).argmax(1)
    targets = torch.as_tensor(targets, device=images.device).long()
    modules = dict(model.named_modules())
    if layer is not None and layer not in modules:
        raise UsageError(f"the model has no layer {layer!r}; its convolutions are: "
                         f"{', '.join(n for n, m in modules.items() if isinstance(m, torch.nn.Conv2d)) or 'none'} "
                         "(any module name of model.named_modules() with a 4-D output will do)")
    chosen = layer if layer is not None else grad_cam_layer(model, images)
    if method == "grad-cam" and chosen is None:
        raise UsageError("Grad-CAM needs a convolutional feature map of at least 4x4 and this model has none (or "
                         "is a transformer); name a layer with --layer, or use the saliency method")
    use_cam = method == "grad-cam" or (method == "auto" and chosen is not None)
    in_place = [m for m in model.modules() if getattr(m, "inplace", None) is True]
    for module in in_place:  # an in-place activation would overwrite the layer output Grad-CAM reads
        setattr(module, "inplace", False)  # noqa: B010 (the attribute is not declared on Module)
    try:
        with torch.enable_grad():
            if use_cam:
                cam = attr.LayerGradCam(model, modules[chosen]).attribute(images, target=targets,
                                                                          relu_attributions=True)
                maps = attr.LayerAttribution.interpolate(cam, tuple(images.shape[2:]), interpolate_mode="bilinear")
                maps = maps[:, 0].clamp_min(0)  # (N, 1, H, W) -> (N, H, W)
            else:
                gradients = attr.Saliency(model).attribute(images.clone().requires_grad_(True), target=targets,
                                                           abs=True)
                maps = gradients.amax(dim=1)  # (N, C, H, W) -> (N, H, W)
    finally:
        for module in in_place:
            setattr(module, "inplace", True)  # noqa: B010
    maps = maps.detach().float()
    peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]  # (N,) -> (N, 1, 1)
    return Explanation((maps / peak).cpu(), targets.cpu(), "grad-cam" if use_cam else "saliency",
                       chosen if use_cam else None)


def explain_files(run: str | Path, files: Sequence[str | Path], *, out: str | Path, method: str = "auto",
                  layer: str | None = None) -> tuple[Path, list[tuple[str, str]]]:
    """Heat maps of image files of the user's own with the model of ``run``, as one figure.

    Files are decoded as training decoded them (:func:`imgclf.data.folder.decode_image`, to the model's
    input shape); each map explains the class the model predicts.

    Args:
        run: A run folder (or ``model.safetensors`` with its ``.json``). files: Image files and folders.
        out: The figure (PNG) to write; an existing file is not replaced.

    Returns:
        The figure's path, and ``(file, problem)`` for each file that could not be read (left out).

    Raises:
        UsageError: If ``out`` exists, no file could be read, or as :func:`explain` and
            :func:`imgclf.checkpoint.load_model` do.
    """
    from imgclf.checkpoint import load_model, read_model_info
    from imgclf.data.folder import DECODE_ERRORS, decode_image
    from imgclf.prediction import image_files
    from imgclf.report.plots import explanation_figure, save_figure

    out = Path(out)
    if out.exists():
        raise UsageError(f"{str(out)!r} exists; choose another --out (nothing is overwritten)")
    model, info = load_model(run), read_model_info(run)
    channels, height, width = info["input_shape"]
    decoded, failed = [], []
    for path in image_files(files):
        try:
            decoded.append((path, decode_image(path, channels=channels, size=(height, width))))
        except DECODE_ERRORS as error:
            failed.append((str(path), f"{type(error).__name__}: {error}"))
        except FileNotFoundError:
            failed.append((str(path), "no such file"))
    if not decoded:
        problems = "; ".join(f"{f}: {p}" for f, p in failed) or "no image files found"
        raise UsageError(f"no image could be read ({problems})")
    images = torch.from_numpy(np.stack([array for _, array in decoded])).float() / 255  # (N, C, H, W)
    found = explain(model.eval(), images, method=method, layer=layer)
    arrays = {"clean": images.numpy(), "labels": found.targets.numpy(), "clean_pred": found.targets.numpy(),
              "clean_maps": found.maps.numpy(), "method": np.array(found.method),
              "layer": np.array(found.layer or "")}
    figure = explanation_figure(arrays, info["class_names"], titles=[path.name for path, _ in decoded])
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(figure, out)
    return out, failed
