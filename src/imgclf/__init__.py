"""imgclf: train image classifiers, measure them honestly, and attack them.

Public API (imported lazily, so ``imgclf --version`` stays fast)::

    imgclf.Run.train(config, out=...)  train into a new run folder; .evaluate(), .attack(), .report()
    imgclf.Run.open(path)              a finished run: .model, .metrics, .settings, .data and the stages
    imgclf.run(config, out=...)        the whole pipeline (train, evaluate, attack, report) at once
    imgclf.load_config(path, overrides)     a validated RunConfig; imgclf.resolve(config) its typed Settings
    imgclf.load_model(path)            trained nn.Module in eval mode, [0, 1] input, logits out
    imgclf.evaluate_robustness(model, images, labels, attacks=..., eps=...)  any nn.Module: tables, checks,
                                       HTML in Jupyter, .save(folder) as a run folder with its report
    imgclf.certify(model, images, labels, sigma=..., radii=...)  randomized smoothing: certified L2 accuracy per
                                       radius beside the smoothed classifier's under SmoothAdv (HTML in Jupyter)
    imgclf.read_model_info(path)       its class names, input shape, normalization
    imgclf.predict(classifier, files)  top-k classes of image files (imgclf.Classifier.load(path))
    imgclf.create_model(name, ...)     a registered architecture with normalization inside
    imgclf.load_data(data_config, seed=...)   train/val/test splits in memory
    imgclf.fit(model, data, train_config, ...) training with the best epoch kept
    imgclf.evaluate(model, split, class_names, device=...)  clean metrics
    imgclf.attacks.fgsm / imgclf.attacks.pgd / imgclf.attacks.robustness / imgclf.attacks.register_attack
    imgclf.defenses.register_recipe    a new adversarial training recipe
    imgclf.compare_runs(paths, out)    several runs side by side: compare.html, comparison.json (a table in Jupyter)
    imgclf.trust_code()                import the py: code that run folders and config files name (trusted files only)
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
    "Run": "imgclf.pipeline",
    "predict": "imgclf.prediction",
    "Classifier": "imgclf.prediction",
    "resolve": "imgclf.settings",
    "Settings": "imgclf.settings",
    "load_config": "imgclf.config",
    "RunConfig": "imgclf.config",
    "UsageError": "imgclf.errors",
    "evaluate_robustness": "imgclf.robustness",
    "RobustnessReport": "imgclf.robustness",
    "trust_code": "imgclf.trust",
    "certify": "imgclf.certification",
    "compare_runs": "imgclf.report",
}

_SUBPACKAGES = ("attacks", "certification", "defenses", "models", "data", "report")

__all__ = ["__version__", *_SUBPACKAGES, *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"imgclf.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'imgclf' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API (what tab completion offers), without loading any of it."""
    return sorted(__all__)
