"""What a ``--model`` value names: :class:`ModelSource`, parsed once from the text by :func:`parse_source`.

``--model`` takes, besides a registered name (``imgclf models``):

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

The configuration parses it when it is checked (:attr:`imgclf.config.ModelConfig.source`); every later step
reads the typed value. This module imports no torch (``--model`` is checked before torch loads).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgclf.errors import UsageError

#: The prefixes of library and user architectures.
LIBRARY_PREFIXES = ("timm:", "torchvision:", "py:")
#: Exported model files by suffix: the kind of file.
EXPORTED_SUFFIXES = {".pt2": "pt2", ".pt": "torchscript", ".ts": "torchscript", ".onnx": "onnx"}


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
