"""A classifier on features (or flattened pixels) into a run folder with the same report as ``imgclf run``.

The folder holds ``classifier.yaml`` (classifier, hyperparameters, seed, where the
features came from), ``classifier.safetensors`` and ``classifier.json`` (the
weights and the standardisation, for the MLPs), ``history.csv``, ``metrics.json``,
``samples.npz``, ``log.txt``, ``figures/`` and ``report.html``.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import yaml

from imgclf import record
from imgclf.features.classifiers import fit_classifier, resolve_options
from imgclf.features.extract import FeatureSet
from imgclf.metrics import classification_metrics
from imgclf.record import SCHEMA_VERSION, DataCounts, Training, section
from imgclf.run_folder import RunFolder, atomic_write_bytes, atomic_write_text


def describe_inputs(source: dict[str, Any]) -> str:
    """One line saying what the classifier was trained on."""
    if source.get("kind") == "features":
        return (f"{source.get('width')} features: layer {source.get('layer')} of {source.get('model')} "
                f"({source.get('run')})")
    return f"{source.get('width')} pixels ({'x'.join(str(v) for v in source.get('input_shape', []))}), flattened"


def fit_classifier_run(data: FeatureSet, classifier: str, *, options: dict[str, Any] | None = None, seed: int = 0,
                       out: str | Path | None = None, quiet: bool = False) -> RunFolder:
    """Train ``classifier`` on ``data``, measure it on the test split, and write the run folder and its report.

    Args:
        data: Train, val and test features and labels (see :class:`FeatureSet`).
        classifier: A name of :data:`imgclf.features.classifiers.CLASSIFIERS`.
        options: The classifier's hyperparameters.
        seed: Seeds everything random.
        out: New run folder (default ``runs/<dataset>-<classifier>-<time>``).
        quiet: Print nothing but errors.

    Returns:
        The run folder.

    Raises:
        UsageError: On a bad classifier, option or output folder (checked before training).
    """
    from imgclf.report import write_report
    from imgclf.run_folder import RunLog
    from imgclf.stages.store import save_samples

    options = resolve_options(classifier, options)  # every bad value fails before the folder exists
    stem = Path(str(data.source.get("dataset", "features"))).name
    folder = RunFolder.create(out, default_name=f"{stem}-{classifier}")  # refuses a non-empty folder
    log = RunLog(folder, quiet=quiet)
    log(f"{classifier} on {describe_inputs(data.source)}: {len(data.train_y)} train / {len(data.val_y)} val / "
        f"{len(data.test_y)} test, {data.num_classes} classes")
    result, scaler = fit_classifier(classifier, data, options=options, seed=seed, log=log)
    settings = {"classifier": classifier, "options": result.options, "seed": seed, "inputs": data.source}
    atomic_write_text(folder.file(record.CLASSIFIER_CONFIG),
                      yaml.safe_dump(json.loads(json.dumps(settings)), sort_keys=False))
    if result.history:
        folder.write_csv(record.HISTORY, result.history)
    if result.weights is not None:
        from safetensors.numpy import save

        tensors = {**{k: np.ascontiguousarray(v) for k, v in result.weights.items()},
                   "scaler.mean": scaler.mean_.astype(np.float32), "scaler.scale": scaler.scale_.astype(np.float32)}
        atomic_write_bytes(folder.file("classifier.safetensors"), save(tensors))
        folder.write_json("classifier.json", {**settings, "class_names": data.class_names,
                                              "tensors": {k: list(v.shape) for k, v in tensors.items()}})
    metrics = classification_metrics(data.test_y, result.test_predictions, data.class_names)
    folder.update_metrics({
        "schema_version": SCHEMA_VERSION,
        "dataset": data.source.get("dataset", "features"), "model": classifier, "num_classes": data.num_classes,
        "class_names": data.class_names, "seed": seed, "inputs": describe_inputs(data.source),
        "data": section(DataCounts(len(data.train_y), len(data.val_y), len(data.test_y),
                                   data.source.get("input_shape"), features=data.width)),
        "clean": metrics.to_dict(),
        "training": section(Training(result.best_epoch, result.val_accuracy, epochs_run=len(result.history))),
        "timing": {"train_seconds": result.seconds},
        "environment": {"python": platform.python_version(), "numpy": np.__version__,
                        "scikit-learn": sklearn.__version__},
    })
    test_images = data.test_images
    if test_images is not None:
        save_samples(folder, lambda rows: test_images[rows].astype(np.float32) / 255, data.test_y,
                     result.test_predictions, seed)
    log(f"test: accuracy {metrics.accuracy:.4f}  macro F1 {metrics.macro_f1:.4f}  (n={metrics.n}); "
        f"training {result.seconds:.1f} s")
    log(f"report: {write_report(folder)}")
    return folder
