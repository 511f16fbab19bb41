"""Model registry: every architecture, its options with their defaults, and how it is built.

A builder has the signature ``builder(*, channels, image_size, num_classes,
<hyperparameters>) -> nn.Module``; it returns the network body that maps normalized
images to logits. The built-in architectures are declared in :data:`MODELS` with
their options, defaults and help, and their builder's ``"module:function"``,
imported only when a model is built: ``imgclf models`` and the checks of
``--model`` and ``--model-option`` need no torch (this module imports none; a test
checks). An architecture outside imgclf registers its builder with
:func:`register_model`, and its options are the builder's keyword arguments with
defaults. :func:`imgclf.models.create_model` puts a ``Normalize`` layer in front, so
every model takes pixel-space input.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imgclf.constraints import resolve_typed_options
from imgclf.errors import unknown_choice

if TYPE_CHECKING:
    from torch import nn

    from imgclf.models.source import ModelSource

_FIXED = ("channels", "image_size", "num_classes")


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture.

    Attributes:
        name: What ``--model`` takes.
        summary: One line: what it is and its source.
        builder: The builder, or its ``"module:function"`` (imported by :attr:`build`).
        min_size: The smallest image side it accepts, in pixels.
        options: ``{option: (default, help)}``; None: the builder's keyword arguments with defaults.
    """

    name: str
    summary: str
    builder: Callable[..., nn.Module] | str
    min_size: int = 1
    options: Mapping[str, tuple[Any, str]] | None = None

    @property
    def build(self) -> Callable[..., nn.Module]:
        """The builder, its module imported on first use."""
        if isinstance(self.builder, str):
            module, _, name = self.builder.partition(":")
            return getattr(importlib.import_module(module), name)
        return self.builder

    def defaults(self) -> dict[str, Any]:
        """The hyperparameters and their default values."""
        if self.options is not None:
            return {name: default for name, (default, _) in self.options.items()}
        params = inspect.signature(self.build).parameters.values()
        return {p.name: p.default for p in params if p.name not in _FIXED}

    def help(self) -> dict[str, str]:
        """What each option does (empty for a builder registered with :func:`register_model`)."""
        return {name: text for name, (_, text) in (self.options or {}).items()}


MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, *, summary: str, min_size: int = 1):
    """Decorator registering a builder under ``name`` (see the module docstring).

    Raises:
        ValueError: If ``name`` is taken.
    """

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _declare(ModelEntry(name, summary, builder, min_size))
        return builder

    return decorate


def _declare(entry: ModelEntry) -> None:
    if entry.name in MODELS:
        raise ValueError(f"model {entry.name!r} is registered twice")
    MODELS[entry.name] = entry


# The built-in architectures, in the order `imgclf models` lists them.
for _entry in (
    ModelEntry("mlp", "flatten, hidden fully connected layers (default one of 128, ReLU), linear head",
               "imgclf.models.small:mlp", 1,
               {"hidden": (128, "units per hidden layer"), "depth": (1, "number of hidden layers"),
                "activation": ("relu", "relu | gelu | elu | tanh | silu"),
                "dropout": (0.0, "after each hidden layer")}),
    ModelEntry("simple-cnn", "two 3x3 convolutions (32 filters, same padding) each with ReLU and 2x2 max-pooling, "
               "linear head", "imgclf.models.small:simple_cnn", 4, {"filters": (32, "filters of both convolutions")}),
    ModelEntry("cnn", "three conv blocks (3x3 conv, batch norm, ReLU, 2x2 max-pool, dropout), for 32-64 px colour "
               "images", "imgclf.models.small:cnn", 8,
               {"widths": ((32, 64, 128), "filters of the three blocks"),
                "dropout": (0.25, "after each block, and 2x before the head")}),
    ModelEntry("keras-cnn", "the Keras CIFAR-10 example: (conv 32, conv 32, pool, dropout), (conv 64, conv 64, pool, "
               "dropout), dense 512, dropout", "imgclf.models.small:keras_cnn", 10,
               {"dropout": (0.25, "after each conv block; the dense layer's dropout is twice this")}),
    ModelEntry("resnet18", "ResNet-18 (He et al. 2016), CIFAR variant: 3x3 stem, no stem max-pool; torchvision's "
               "blocks", "imgclf.models.resnet:resnet18", 8, {}),
    ModelEntry("preact-resnet18", "pre-activation ResNet-18 (He et al. 2016), CIFAR variant; the "
               "adversarial-training standard", "imgclf.models.resnet:preact_resnet18", 8, {}),
    ModelEntry("wide-resnet", "Wide ResNet WRN-depth-width (Zagoruyko & Komodakis 2016); default WRN-16-4",
               "imgclf.models.resnet:wide_resnet", 8,
               {"depth": (16, "6n + 4: 16, 22, 28, 34, 40"), "width": (4, "widening factor k"),
                "dropout": (0.0, "between the convolutions of each block")}),
    ModelEntry("vit", "vision transformer for small images (Dosovitskiy et al. 2021): patch 4, 6 layers, width 192",
               "imgclf.models.vit:vit", 4,
               {"patch": (4, "patch side in pixels; 4 at 32 px gives 64 tokens"),
                "depth": (6, "transformer encoder layers"), "width": (192, "token dimension"),
                "heads": (3, "attention heads (width / heads = 64 per head)"),
                "mlp_ratio": (2, "MLP hidden size = mlp_ratio * width"),
                "dropout": (0.0, "in the attention and MLP blocks")}),
    ModelEntry("madry-cnn", "Madry et al.'s MNIST network (ICLR 2018): 5x5 convs 32 and 64 with 2x2 max-pooling, "
               "dense 1024", "imgclf.models.mnist_robust:madry_cnn", 4, {}),
    ModelEntry("trades-cnn", "TRADES's SmallCNN for MNIST (Zhang et al. 2019): 3x3 convs 32, 32, 64, 64, dense 200, "
               "200", "imgclf.models.mnist_robust:trades_cnn", 14, {"dropout": (0.5, "after the first dense layer")}),
    ModelEntry("fast-mnist-cnn", "the MNIST network of fast adversarial training (Wong et al. 2020): 4x4 stride-2 "
               "convs 16 and 32, dense 100", "imgclf.models.mnist_robust:fast_mnist_cnn", 4, {}),
    ModelEntry("fast-cnn", "airbench-style residual-free net with a whitening first layer (Jordan 2024), for 32 px "
               "images", "imgclf.models.fast:fast_cnn", 16,
               {"widths": ((64, 256, 256), "filters of the three conv groups"),
                "head_scale": (1 / 9, "airbench's output temperature")}),
):
    _declare(_entry)


def get_entry(name: str | ModelSource | ModelEntry) -> ModelEntry:
    """The registry entry for a model: a registered one, or a library or user architecture (``timm:NAME``,
    ``torchvision:NAME``, ``py:module:factory``; see :mod:`imgclf.models.source`).

    Args:
        name: What ``--model`` takes, its parsed :class:`~imgclf.models.source.ModelSource` (a run's
            ``settings.source``), or an entry (returned as it is).

    An exported model file (``.pt2``, ``.pt``, ``.onnx``) has an entry without options whose builder
    refuses to build: such a model is loaded whole, never trained.

    Raises:
        UsageError: If ``name`` is none of these, or a library or user architecture cannot be found.
    """
    from imgclf.models.builders import source_builder
    from imgclf.models.source import ModelSource, parse_source

    if isinstance(name, ModelEntry):
        return name
    text = name.name if isinstance(name, ModelSource) else name
    if text in MODELS:
        return MODELS[text]
    source = name if isinstance(name, ModelSource) else parse_source(name)
    if source.kind != "registry":
        builder, options = source_builder(source)
        summary = f"an exported model ({source.kind})" if source.exported else f"a {source.kind} model"
        return ModelEntry(source.name, summary, builder, 1, options)
    raise unknown_choice("model", text, [*MODELS, "timm:<name>", "torchvision:<name>", "py:<module>:<factory>"])


def resolve_options(name: str | ModelSource | ModelEntry, options: dict[str, Any] | None) -> dict[str, Any]:
    """All hyperparameters of a model (as :func:`get_entry` takes it): defaults overridden by ``options``.

    Raises:
        UsageError: Unknown model name or option, or an option of the wrong type.
    """
    entry = get_entry(name)
    return resolve_typed_options("model", entry.name, entry.defaults(), options)
