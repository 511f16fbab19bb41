"""Model sources: where a ``--model`` comes from when it is not one of imgclf's own architectures.

``--model`` takes, besides a registered name (``imgclf models``):

=============================  ==============================================================
``timm:NAME``                  a timm model (Wightman, PyTorch Image Models; ``imgclf[timm]``)
``torchvision:NAME``           a torchvision classification model (``torchvision.models``)
``py:package.module:factory``  a class or function in the user's own code; also
                               ``py:path/to/file.py:factory``
``FILE.pt2``                   a ``torch.export`` program (white-box attacks, gradients)
``FILE.pt`` / ``FILE.ts``      a TorchScript module (white-box attacks, gradients)
``FILE.onnx``                  an ONNX model, run by ONNX Runtime: no gradients, so only
                               black-box attacks (Square) apply
=============================  ==============================================================

Library and user models are *architectures*: :func:`source_entry` gives them a registry entry
whose options are the builder's (``pretrained`` for timm and torchvision, the factory's keyword
arguments for ``py:``), and their weights come from ``--weights FILE`` (safetensors, or a
PyTorch state dict read with ``weights_only=True``; :func:`load_weights`). Exported files are
whole models and are read by :func:`load_exported`. Nothing is ever unpickled.

This module imports no torch until a model is built (``--model`` is checked before torch loads).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from imgclf.errors import UsageError, first_line

if TYPE_CHECKING:
    import torch
    from torch import nn

    from imgclf.config import ModelConfig

#: The prefixes of library and user architectures.
LIBRARY_PREFIXES = ("timm:", "torchvision:", "py:")
#: Exported model files by suffix: the kind of file.
EXPORTED_SUFFIXES = {".pt2": "pt2", ".pt": "torchscript", ".ts": "torchscript", ".onnx": "onnx"}
#: Keys under which checkpoints of common training scripts nest their state dict.
NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net")
#: Seconds a hub server gets to answer before imgclf says it cannot be reached.
HUB_TIMEOUT = 1.5
_FIXED = ("channels", "image_size", "num_classes")


@dataclass(frozen=True)
class ModelSource:
    """What a ``--model`` value names.

    Attributes:
        kind: ``"registry"``, ``"timm"``, ``"torchvision"``, ``"py"``, ``"pt2"``, ``"torchscript"`` or ``"onnx"``.
        name: The value as given.
        target: The library's model name, ``module:factory`` / ``file.py:factory``, or the exported file.
    """

    kind: str
    name: str
    target: str

    @property
    def exported(self) -> bool:
        """A whole model in a file (it has no architecture to train)."""
        return self.kind in ("pt2", "torchscript", "onnx")

    @property
    def short_name(self) -> str:
        """A name for folders: ``resnet18`` for ``timm:resnet18``, ``Net`` for ``py:file.py:Net``, ``model`` for
        ``path/model.pt2``."""
        if self.exported:
            return Path(self.target).name.split(".")[0] or "model"
        return self.target.rsplit(":", 1)[-1].replace("/", "-") or self.kind

    @property
    def differentiable(self) -> bool:
        """Gradients reach the input (ONNX Runtime gives none)."""
        return self.kind != "onnx"


def parse_source(name: str) -> ModelSource:
    """The source a ``--model`` value names (see the module docstring); registry names are not checked here.

    Raises:
        UsageError: On a prefix with nothing after it, or a ``py:`` value without ``:factory``.
    """
    for prefix in LIBRARY_PREFIXES:
        if name.startswith(prefix):
            target = name[len(prefix):]
            if not target:
                raise UsageError(f"--model {name!r} names no model after {prefix!r}")
            if prefix == "py:" and (":" not in target or not target.rsplit(":", 1)[1]):
                raise UsageError(f"--model {name!r}: give the factory as py:package.module:factory or "
                                 "py:path/to/file.py:factory")
            return ModelSource(prefix[:-1], name, target)
    suffix = Path(name).suffix.lower()
    if suffix in EXPORTED_SUFFIXES:  # (no registered name has a file suffix)
        return ModelSource(EXPORTED_SUFFIXES[suffix], name, name)
    return ModelSource("registry", name, name)


# -- architectures from libraries and the user's code ------------------------------------------
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
    timm = _import("timm", 'timm models need the timm package: pip install "imgclf[timm]"')
    if not timm.is_model(model_name):
        raise UsageError(f"unknown timm model {model_name!r}"
                         + (_close(model_name, timm.list_models()) or "; see timm.list_models()"))

    def build(*, channels: int, image_size: tuple[int, int], num_classes: int, pretrained: bool = False) -> nn.Module:
        if pretrained:
            _require_hub("timm", model_name)
        try:
            return timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes, in_chans=channels)
        except OSError as error:  # huggingface_hub's "not found / no connection" errors are OSErrors
            raise _hub_error("timm", model_name, first_line(error)) from None

    build.__doc__ = f"timm model {model_name!r}."
    return build


def _torchvision_builder(model_name: str) -> Callable[..., nn.Module]:
    from torchvision import models

    available = models.list_models(module=models)
    if model_name not in available:
        raise UsageError(f"unknown torchvision model {model_name!r}" + _close(model_name, available))

    def build(*, channels: int, image_size: tuple[int, int], num_classes: int, pretrained: bool = False) -> nn.Module:
        if pretrained:
            _require_hub("torchvision", model_name)
            weights = models.get_model_weights(model_name).DEFAULT
            try:
                body = models.get_model(model_name, weights=weights)
            except (OSError, RuntimeError) as error:  # urllib's URLError is an OSError
                raise _hub_error("torchvision", model_name, first_line(error)) from None
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


def import_user_module(module_name: str) -> Any:
    """Import the user's module by dotted name (the working directory is on the path, as for ``python -m``)
    or from a ``.py`` file (its folder goes on the path so that it can import its neighbours).

    Raises:
        UsageError: If the file or module does not exist or fails to import, with the error's first line.
    """
    try:
        if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
            path = Path(module_name).expanduser().resolve()
            if not path.is_file():
                raise UsageError(f"no Python file {module_name!r} (looked for {str(path)!r})")
            unique = "imgclf_user_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
            if unique in sys.modules:
                return sys.modules[unique]
            if str(path.parent) not in sys.path:
                sys.path.insert(0, str(path.parent))
            spec = importlib.util.spec_from_file_location(unique, path)
            if spec is None or spec.loader is None:
                raise UsageError(f"{module_name!r} cannot be imported as a Python module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[unique] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[unique]
                raise
            USER_CODE_FILES.add(str(path))
            return module
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        module = importlib.import_module(module_name)
        file = getattr(module, "__file__", None)
        if file:
            USER_CODE_FILES.add(str(Path(file).resolve()))
        return module
    except UsageError:
        raise
    except (Exception, SystemExit) as error:  # the user's module may raise anything while it is imported
        raise UsageError(f"cannot import {module_name!r} ({type(error).__name__}: {first_line(error)}); the "
                         "module must be importable here (put its folder on PYTHONPATH or give its .py file)") from None


#: The files of the user's modules imported in this process (``py:`` sources), for :func:`user_code_frame`.
USER_CODE_FILES: set[str] = set()


def user_code_frame(error: BaseException) -> str | None:
    """Where in the user's own code (a ``py:`` source's module) ``error`` was raised, as ``FILE, line N``, or
    None when no frame of its traceback is in such code."""
    import traceback

    inside = [frame for frame in traceback.extract_tb(error.__traceback__)
              if str(Path(frame.filename).resolve()) in USER_CODE_FILES]
    return f"{Path(inside[-1].filename).name}, line {inside[-1].lineno}" if inside else None


def _import(name: str, message: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UsageError(message) from None


def _close(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    return f"; similar names: {', '.join(close)}" if close else ""


# -- the library's own preprocessing ----------------------------------------------------------
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
        timm_models = _import("timm.models", 'timm models need the timm package: pip install "imgclf[timm]"')
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


def normalization(model: ModelConfig, *, channels: int, data_mean: Sequence[float],
                  data_std: Sequence[float]) -> tuple[list[float], list[float], str]:
    """The per-channel mean and std a model gets (applied inside it, so eps stays in pixel units), and where
    they come from, in words.

    In order: ``--mean/--std``; the normalization saved in an imgclf model's weights file (``--weights
    RUN/model.safetensors``); for weights from a library or a file (``pretrained=true`` or ``--weights``),
    the library's metadata (timm's pretrained configuration, torchvision's weights; averaged over the colour
    channels for grey images), else none at all (the model gets ``[0, 1]`` pixels); an exported model, none
    (imgclf's exports hold theirs); a model trained here from scratch, the training data's statistics.

    Raises:
        UsageError: If ``--mean/--std`` do not have one value per channel.
    """
    if model.mean is not None and model.std is not None:
        if len(model.mean) != channels:
            raise UsageError(f"--mean/--std need {channels} value(s), one per channel of the images, got "
                             f"{len(model.mean)}")
        return list(model.mean), list(model.std), "--mean/--std"
    source = parse_source(model.name)
    identity = [0.0] * channels, [1.0] * channels, "none: the model gets [0, 1] pixels (--mean/--std set one)"
    if source.exported:
        return identity
    if model.weights is not None:
        own = weights_normalization(model.weights)
        if own is not None:
            mean, std = own
            if len(mean) == channels:
                return mean, std, f"the normalization saved with {model.weights} (an imgclf model's)"
    if model.weights is not None or model.options.get("pretrained"):
        library = library_preprocessing(source)
        if library is None:
            return identity
        mean, std = list(library.mean), list(library.std)
        if channels != len(mean):  # grey images for a colour network: one channel, the average
            mean, std = [sum(mean) / len(mean)] * channels, [sum(std) / len(std)] * channels
        return mean, std, f"{source.kind}'s metadata for {source.target}"
    return list(data_mean), list(data_std), "the training data's per-channel statistics"


def weights_normalization(path: str | Path) -> tuple[list[float], list[float]] | None:
    """The ``normalize.mean`` and ``normalize.std`` an imgclf model's safetensors file holds (its
    :class:`~imgclf.models.classifier.Normalize` layer), or None for any other file (or one that cannot be
    read: loading the weights says why)."""
    if Path(path).suffix != ".safetensors":
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            if not {"normalize.mean", "normalize.std"} <= keys:
                return None
            mean, std = handle.get_tensor("normalize.mean"), handle.get_tensor("normalize.std")
    except (SafetensorError, OSError):
        return None
    return mean.flatten().tolist(), std.flatten().tolist()


def native_image_size(model: ModelConfig) -> int | None:
    """The input side a library's weights were trained at, for a model with weights (``--weights`` or
    ``pretrained=true``) from timm or torchvision; else None (the data's own size is used)."""
    if model.weights is None and not model.options.get("pretrained"):
        return None
    library = library_preprocessing(parse_source(model.name))
    return library.image_size if library is not None else None


# -- hub weights, offline -----------------------------------------------------------------------
def check_pretrained(model: ModelConfig) -> None:
    """With ``pretrained=true``, fail at once, in one line, when the library's weights are neither cached nor
    downloadable (huggingface_hub would otherwise retry for about a minute). It imports no torch, so the command
    line calls it before anything heavy is loaded; the builders call it again.

    ``IMGCLF_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1`` for timm) says there is no network: no connection is tried.

    Raises:
        UsageError: Naming the model and saying how to pass a local weights file instead.
    """
    source = parse_source(model.name)
    if model.options.get("pretrained") is True and source.kind in ("timm", "torchvision"):
        _require_hub(source.kind, source.target)


def _require_hub(library: str, model_name: str) -> None:
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    offline = os.environ.get("IMGCLF_OFFLINE", "") not in ("", "0")
    if library == "timm":
        hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", home / "huggingface")) / "hub")
        cached = any(hub.glob(f"models--timm--{model_name}*"))
        offline = offline or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        url = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    else:
        checkpoints = Path(os.environ.get("TORCH_HOME", home / "torch")) / "hub" / "checkpoints"
        cached = any(checkpoints.glob(f"{model_name}-*.pth"))
        url = "https://download.pytorch.org"
    if not cached and (offline or not _reachable(url)):
        raise _hub_error(library, model_name, "the hub cannot be reached and the weights are not cached")


def _reachable(url: str) -> bool:
    """Whether a TCP connection to ``url``'s host opens within :data:`HUB_TIMEOUT` seconds."""
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    began = time.monotonic()
    try:
        socket.setdefaulttimeout(HUB_TIMEOUT)
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=HUB_TIMEOUT):
            return time.monotonic() - began < HUB_TIMEOUT
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(None)


def _hub_error(library: str, model_name: str, why: str) -> UsageError:
    return UsageError(f"the pretrained weights of {library} model {model_name!r} cannot be had ({why}); download "
                      f"them where there is a network and pass the file: --model {library}:{model_name} "
                      "--weights FILE (.safetensors or a state dict .pth)")


# -- weights from a file ------------------------------------------------------------------------
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
    from imgclf.checkpoint import check_weights
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


# -- exported models ------------------------------------------------------------------------------
def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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

    ort = _import("onnxruntime", 'ONNX models need onnxruntime: pip install "imgclf[export]"')
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


def differentiable(model: nn.Module) -> bool:
    """Whether gradients of ``model``'s logits reach its input (False for an ONNX model and any module that
    says ``differentiable = False``, including inside an :class:`~imgclf.models.ImageClassifier`)."""
    return all(getattr(module, "differentiable", True) for module in model.modules())
