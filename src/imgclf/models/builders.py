"""Architectures from libraries and the user's code: registry builders for ``timm:NAME``, ``torchvision:NAME``
and ``py:module:factory`` sources (:class:`imgclf.models.source.ModelSource`), and what the libraries say their
weights expect (:func:`library_preprocessing`).

Their options are the builder's (``pretrained`` for timm and torchvision, the factory's keyword arguments for
``py:``); their weights come from ``--weights FILE`` (:mod:`imgclf.models.weights`). Nothing is ever unpickled.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imgclf.errors import UsageError, first_line
from imgclf.lazy import require_module
from imgclf.models.hub import hub_error, require_hub
from imgclf.models.user_code import import_user_module

if TYPE_CHECKING:
    from torch import nn

    from imgclf.models.source import ModelSource

_FIXED = ("channels", "image_size", "num_classes")


def source_builder(source: ModelSource) -> tuple[Callable[..., nn.Module], dict[str, tuple[Any, str]]]:
    """A registry builder ``build(*, channels, image_size, num_classes, **options)`` for a library or user
    architecture, and its options ``{name: (default, help)}``.

    An exported file is a whole model, not an architecture: its builder raises UsageError.

    Raises:
        UsageError: If the library is missing, the model unknown, or the factory cannot be imported.
    """
    if source.kind == "timm":
        return _timm_builder(source.target), {"pretrained": (False, "fetch the published weights from the hub")}
    if source.kind == "torchvision":
        return _torchvision_builder(source.target), {"pretrained": (False, "the DEFAULT weights from the hub")}
    if source.kind == "py":
        return _py_builder(source.target)

    def refuse(**_: Any) -> nn.Module:
        raise UsageError(f"{source.name!r} is an exported model: it can be evaluated, attacked and used to "
                         "predict, but not trained; train its architecture instead (--model NAME, timm:, "
                         "torchvision: or py:)")

    return refuse, {}


def _timm_builder(model_name: str) -> Callable[..., nn.Module]:
    timm = require_module("timm", 'timm models need the timm package: pip install "imgclf[timm]"')
    if not timm.is_model(model_name):
        raise UsageError(f"unknown timm model {model_name!r}"
                         + (_close(model_name, timm.list_models()) or "; see timm.list_models()"))

    def build(*, channels: int, image_size: tuple[int, int], num_classes: int, pretrained: bool = False) -> nn.Module:
        if pretrained:
            require_hub("timm", model_name)
        try:
            return timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes, in_chans=channels)
        except OSError as error:  # huggingface_hub's "not found / no connection" errors are OSErrors
            raise hub_error("timm", model_name, first_line(error)) from None

    build.__doc__ = f"timm model {model_name!r}."
    return build


def _torchvision_builder(model_name: str) -> Callable[..., nn.Module]:
    from torchvision import models

    available = models.list_models(module=models)
    if model_name not in available:
        raise UsageError(f"unknown torchvision model {model_name!r}" + _close(model_name, available))

    def build(*, channels: int, image_size: tuple[int, int], num_classes: int, pretrained: bool = False) -> nn.Module:
        if pretrained:
            require_hub("torchvision", model_name)
            weights = models.get_model_weights(model_name).DEFAULT
            try:
                body = models.get_model(model_name, weights=weights)
            except (OSError, RuntimeError) as error:  # urllib's URLError is an OSError
                raise hub_error("torchvision", model_name, first_line(error)) from None
            if num_classes != len(weights.meta["categories"]):
                _replace_head(body, num_classes, model_name)
        else:
            body = models.get_model(model_name, weights=None, num_classes=num_classes)
        from imgclf.models.classifier import GreyToRGB

        return GreyToRGB(body) if channels == 1 else body

    build.__doc__ = f"torchvision model {model_name!r}."
    return build


def _replace_head(body: nn.Module, num_classes: int, model_name: str) -> None:
    """Give a pretrained torchvision network a new linear head of ``num_classes`` outputs."""
    from torch import nn

    for attribute in ("fc", "classifier", "head", "heads"):
        holder = getattr(body, attribute, None)
        if isinstance(holder, nn.Linear):
            setattr(body, attribute, nn.Linear(holder.in_features, num_classes))
            return
        if isinstance(holder, nn.Sequential) and isinstance(holder[-1], nn.Linear):
            holder[-1] = nn.Linear(holder[-1].in_features, num_classes)
            return
    raise UsageError(f"torchvision model {model_name!r}: no linear head found to replace for {num_classes} classes")


def _py_builder(target: str) -> tuple[Callable[..., nn.Module], dict[str, tuple[Any, str]]]:
    """The user's factory ``module:factory`` or ``file.py:factory`` as a builder; its options are its keyword
    arguments with defaults, and it gets ``channels``, ``image_size`` and ``num_classes`` where it takes them."""
    module_name, _, factory_name = target.rpartition(":")
    module = import_user_module(module_name)
    factory = getattr(module, factory_name, None)
    if factory is None or not callable(factory):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise UsageError(f"{module_name!r} has no callable {factory_name!r}" + _close(factory_name, names))
    try:
        parameters: Mapping[str, inspect.Parameter] = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}  # a builtin or an extension type: called without arguments
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    options = {name: (p.default, "") for name, p in parameters.items()
               if name not in _FIXED and p.default is not inspect.Parameter.empty
               and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}
    required = [name for name, p in parameters.items() if name not in _FIXED and p.default is inspect.Parameter.empty
                and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if required:
        raise UsageError(f"py:{target}: the factory's arguments {', '.join(required)} have no defaults; give them "
                         "defaults, or wrap the factory in one that does")

    def build(*, channels: int, image_size: tuple[int, int], num_classes: int, **values: Any) -> nn.Module:
        from torch import nn

        fixed = {"channels": channels, "image_size": image_size, "num_classes": num_classes}
        given = {k: v for k, v in fixed.items() if k in parameters or takes_any}
        try:
            model = factory(**given, **values)
        except (TypeError, ValueError, RuntimeError) as error:
            raise UsageError(f"py:{target} could not build the model ({type(error).__name__}: "
                             f"{first_line(error)})") from None
        if not isinstance(model, nn.Module):
            raise UsageError(f"py:{target} returned a {type(model).__name__}, not a torch.nn.Module")
        return model

    build.__doc__ = f"the user's model py:{target}."
    return build, options


def _close(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    return f"; similar names: {', '.join(close)}" if close else ""


@dataclass(frozen=True)
class Preprocessing:
    """What a library says its weights expect: per-channel ``mean`` and ``std`` in ``[0, 1]`` pixel units
    and the native input side ``image_size`` in pixels."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int


def library_preprocessing(source: ModelSource) -> Preprocessing | None:
    """timm's pretrained configuration or torchvision's ``DEFAULT`` weights' transforms for the model; None for
    other sources or a model the library describes without them.

    Raises:
        UsageError: If the library is not installed.
    """
    if source.kind == "timm":
        timm_models = require_module("timm.models", 'timm models need the timm package: pip install "imgclf[timm]"')
        cfg = timm_models.get_pretrained_cfg(source.target)
        if cfg is None or not getattr(cfg, "mean", None):
            return None
        return Preprocessing(tuple(cfg.mean), tuple(cfg.std), int(cfg.input_size[-1]))
    if source.kind == "torchvision":
        from torchvision import models

        try:
            weights = models.get_model_weights(source.target)
        except (ValueError, KeyError):
            return None
        transforms = weights.DEFAULT.transforms()
        crop = transforms.crop_size
        return Preprocessing(tuple(transforms.mean), tuple(transforms.std),
                             int(crop[0] if isinstance(crop, list | tuple) else crop))
    return None
