"""imgclf: train image classifiers, measure them honestly, and attack them.

Public API (imported lazily, so ``imgclf --version`` stays fast)::

    imgclf.load_model(path)            trained nn.Module in eval mode, [0, 1] input, logits out
    imgclf.read_model_info(path)       its class names, input shape, normalization
    imgclf.create_model(name, ...)     a registered architecture with normalization inside
    imgclf.load_data(data_config, seed=...)   train/val/test splits in memory
    imgclf.fit(model, data, train_config, ...) training with the best epoch kept
    imgclf.evaluate(model, split, class_names, device=...)  clean metrics
    imgclf.attacks.fgsm / imgclf.attacks.pgd / imgclf.attacks.robustness
    imgclf.run(config, out=...)        the whole pipeline into a run folder
    imgclf.load_config(path, overrides)     a validated RunConfig
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "imgclf.checkpoint",
    "read_model_info": "imgclf.checkpoint",
    "save_model": "imgclf.checkpoint",
    "create_model": "imgclf.models",
    "load_data": "imgclf.data",
    "fit": "imgclf.training",
    "evaluate": "imgclf.evaluation",
    "run": "imgclf.pipeline",
    "load_config": "imgclf.config",
    "RunConfig": "imgclf.config",
    "UsageError": "imgclf.errors",
}

__all__ = ["__version__", "attacks", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name == "attacks":
        return importlib.import_module("imgclf.attacks")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'imgclf' has no attribute {name!r}")
