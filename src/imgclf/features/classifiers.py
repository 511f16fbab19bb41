"""Classifiers trained on feature vectors: the NumPy MLP, a torch MLP, and
scikit-learn's logistic regression, SVM and k-NN, behind one interface.

Every classifier sees the features standardised with the training split's
mean and standard deviation (scikit-learn's ``StandardScaler``; constant
features keep scale 1), is selected on the validation split where it trains
for several epochs, and predicts the test split once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from sklearn.preprocessing import StandardScaler

from imgclf.constraints import resolve_typed_options as resolve
from imgclf.errors import UsageError, unknown_choice
from imgclf.features.extract import FeatureSet
from imgclf.numpy_nn.numpy_mlp import MLPConfig, train_mlp

Log = Callable[[str], None]


@dataclass
class ClassifierResult:
    """What a classifier returns.

    Attributes:
        test_predictions: ``int64`` ``(N_test,)``.
        val_accuracy: Accuracy on the validation split in ``[0, 1]`` (of the kept epoch).
        history: Per epoch rows as in ``history.csv`` (empty for one-shot classifiers).
        best_epoch: The kept epoch (None for one-shot classifiers).
        weights: Arrays to save as safetensors (None where the model is not a set of arrays).
        options: The hyperparameters used, defaults filled in.
        seconds: Training wall time.
    """

    test_predictions: np.ndarray
    val_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    weights: dict[str, np.ndarray] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _numpy_mlp(data: FeatureSet, scaled: dict[str, np.ndarray], options: dict[str, Any], seed: int,
               log: Log) -> ClassifierResult:
    config = MLPConfig(**options)
    result = train_mlp(scaled["train"], data.train_y, scaled["val"], data.val_y, data.num_classes, config,
                       seed=seed, log=log)
    predictions = result.model.predict_logits(scaled["test"]).argmax(1)
    return ClassifierResult(predictions, result.best_val_accuracy, result.history, result.best_epoch,
                            result.model.state(), config.to_dict(), result.seconds)


TORCH_MLP_DEFAULTS = {"hidden": (128,), "dropout": 0.0, "epochs": 30, "batch_size": 128, "lr": 1e-3,
                      "weight_decay": 1e-4}


def _torch_mlp(data: FeatureSet, scaled: dict[str, np.ndarray], options: dict[str, Any], seed: int,
               log: Log) -> ClassifierResult:
    """A torch MLP (ReLU, optional dropout) trained with AdamW and a cosine schedule, on the CPU."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = data.width
    for units in options["hidden"]:
        layers += [nn.Linear(width, units), nn.ReLU()]
        layers += [nn.Dropout(options["dropout"])] if options["dropout"] else []
        width = units
    model = nn.Sequential(*layers, nn.Linear(width, data.num_classes))
    x = {name: torch.from_numpy(np.ascontiguousarray(scaled[name])) for name in ("train", "val", "test")}
    y_train, y_val = torch.from_numpy(data.train_y), torch.from_numpy(data.val_y)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options["lr"], weight_decay=options["weight_decay"])
    steps = options["epochs"] * math.ceil(len(y_train) / options["batch_size"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    order_gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] = (-1.0, 0, {})
    start = time.perf_counter()
    for epoch in range(1, options["epochs"] + 1):
        began, loss_sum, correct = time.perf_counter(), 0.0, 0
        model.train()
        for rows in torch.randperm(len(y_train), generator=order_gen).split(options["batch_size"]):
            logits = model(x["train"][rows])
            loss = nn.functional.cross_entropy(logits, y_train[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() * len(rows)
            correct += int((logits.argmax(1) == y_train[rows]).sum())
        model.eval()
        with torch.no_grad():
            val_logits = model(x["val"])
        val_accuracy = float((val_logits.argmax(1) == y_val).float().mean())
        history.append({"epoch": epoch, "train_loss": float(loss_sum) / len(y_train),
                        "train_accuracy": float(correct) / len(y_train),
                        "val_loss": nn.functional.cross_entropy(val_logits, y_val).item(),
                        "val_accuracy": val_accuracy, "lr": float(schedule.get_last_lr()[0]),
                        "seconds": time.perf_counter() - began})
        log(f"epoch {epoch:>3}/{options['epochs']}  train loss {history[-1]['train_loss']:.4f}  "
            f"val acc {val_accuracy:.4f}")
        if val_accuracy >= best[0]:
            best = (val_accuracy, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    model.eval()
    with torch.no_grad():
        predictions = model(x["test"]).argmax(1).numpy()
    weights = {k: v.numpy() for k, v in best[2].items()}
    return ClassifierResult(predictions, best[0], history, best[1], weights,
                            {**options, "hidden": list(options["hidden"])}, time.perf_counter() - start)


def _sklearn(build: Callable[[dict[str, Any], int], Any], name: str):
    def fit(data: FeatureSet, scaled: dict[str, np.ndarray], options: dict[str, Any], seed: int,
            log: Log) -> ClassifierResult:
        start = time.perf_counter()
        model = build(options, seed)
        try:  # scikit-learn checks its options against each estimator's parameter constraints
            model.fit(scaled["train"], data.train_y)
            val_predictions = model.predict(scaled["val"]) if len(data.val_y) else None
            test_predictions = model.predict(scaled["test"]).astype(np.int64)
        except ValueError as error:  # InvalidParameterError, or e.g. more neighbours than training examples
            given = ", ".join(f"{key}={value!r}" for key, value in options.items())
            raise UsageError(f"classifier {name} cannot be fitted with {given}: {error}") from None
        val_accuracy = float((val_predictions == data.val_y).mean()) if val_predictions is not None else float("nan")
        log(f"{name}: validation accuracy {val_accuracy:.4f}")
        return ClassifierResult(test_predictions, val_accuracy, options=options, seconds=time.perf_counter() - start)
    return fit


def _logistic(options, seed):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=options["C"], max_iter=options["max_iter"], random_state=seed)


def _svm(options, seed):
    from sklearn.svm import SVC

    return SVC(C=options["C"], kernel=options["kernel"], gamma=options["gamma"], random_state=seed)


def _knn(options, seed):
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=options["n_neighbors"], weights=options["weights"])


@dataclass(frozen=True)
class ClassifierEntry:
    """A registered classifier: its fit function, default hyperparameters and a one-line description."""

    fit: Callable[..., ClassifierResult]
    defaults: dict[str, Any]
    summary: str
    build: Callable[[dict[str, Any], int], Any] | None = None  # scikit-learn: the estimator from the options


def _sklearn_entry(name: str, build: Callable[[dict[str, Any], int], Any], defaults: dict[str, Any],
                   summary: str) -> ClassifierEntry:
    return ClassifierEntry(_sklearn(build, name), defaults, summary, build)


#: Every classifier by name.
CLASSIFIERS: dict[str, ClassifierEntry] = {
    "numpy-mlp": ClassifierEntry(_numpy_mlp, {f.name: f.default for f in fields(MLPConfig)},
                                 "imgclf's NumPy MLP (imgclf.numpy_nn.numpy_mlp), SGD with momentum"),
    "torch-mlp": ClassifierEntry(_torch_mlp, TORCH_MLP_DEFAULTS, "a torch MLP with AdamW and a cosine schedule"),
    "logistic": _sklearn_entry("logistic", _logistic, {"C": 1.0, "max_iter": 1000},
                               "scikit-learn's multinomial logistic regression"),
    "svm": _sklearn_entry("svm", _svm, {"C": 1.0, "kernel": "rbf", "gamma": "scale"},
                          "scikit-learn's SVC (RBF kernel by default; minutes on 50,000 examples)"),
    "knn": _sklearn_entry("knn", _knn, {"n_neighbors": 5, "weights": "uniform"},
                          "scikit-learn's k-nearest neighbours"),
}


def resolve_options(name: str, given: dict[str, Any] | None) -> dict[str, Any]:
    """Classifier ``name``'s hyperparameters: its defaults updated with ``given``, checked.

    Raises:
        UsageError: On an unknown classifier or option, a value of the wrong type, or
            (NumPy MLP) a value out of range; the message lists the valid choices.
    """
    if name not in CLASSIFIERS:
        raise unknown_choice("classifier", name, CLASSIFIERS)
    options = resolve("classifier", name, CLASSIFIERS[name].defaults, given)
    if name == "numpy-mlp":
        MLPConfig(**options)  # checks the ranges
    elif name == "torch-mlp":
        _check_torch_mlp(options)
    elif (build := CLASSIFIERS[name].build) is not None:  # scikit-learn's own constraints, before any data
        try:
            _sklearn_check(build, options)
        except ValueError as error:
            raise UsageError(f"classifier {name}: {error}") from None
    return options


def _sklearn_check(build: Callable[[dict[str, Any], int], Any], options: dict[str, Any]) -> None:
    """Check a scikit-learn estimator's hyperparameters against the constraints it declares, so
    that a bad option is refused before the features are read. (Where this scikit-learn has no
    declared constraints, ``fit`` checks the same and its error is turned into a UsageError.)

    Raises:
        ValueError: scikit-learn's ``InvalidParameterError`` naming the parameter and its valid values.
    """
    try:
        from sklearn.utils._param_validation import validate_parameter_constraints
    except ImportError:
        return
    estimator = build(options, 0)
    validate_parameter_constraints(getattr(estimator, "_parameter_constraints", {}), estimator.get_params(deep=False),
                                   caller_name=type(estimator).__name__)


def _check_torch_mlp(options: dict[str, Any]) -> None:
    """Ranges of the torch MLP's options.

    Raises:
        UsageError: Naming the first option out of range.
    """
    hidden = options["hidden"]
    if not all(isinstance(units, int) and not isinstance(units, bool) and units >= 1 for units in hidden):
        raise UsageError(f"classifier option hidden must be positive integers, got {list(hidden)}")
    checks = {"dropout": 0 <= options["dropout"] < 1, "epochs": options["epochs"] >= 1,
              "batch_size": options["batch_size"] >= 1, "lr": math.isfinite(options["lr"]) and options["lr"] > 0,
              "weight_decay": math.isfinite(options["weight_decay"]) and options["weight_decay"] >= 0}
    ranges = {"dropout": "[0, 1)", "epochs": ">= 1", "batch_size": ">= 1", "lr": "> 0", "weight_decay": ">= 0"}
    for key, ok in checks.items():
        if not ok:
            raise UsageError(f"classifier option {key} must be {ranges[key]}, got {options[key]!r}")


def fit_classifier(name: str, data: FeatureSet, *, options: dict[str, Any] | None = None, seed: int = 0,
                   log: Log = print) -> tuple[ClassifierResult, StandardScaler]:
    """Standardise the features and train classifier ``name`` on ``data``.

    Args:
        name: One of :data:`CLASSIFIERS`.
        data: Features ``(N, D)`` and labels of train, val and test.
        options: Hyperparameters (unknown keys are an error listing the valid ones).
        seed: Seeds initialisation and batch order.
        log: Receives progress lines.

    Returns:
        The result and the fitted scaler (its ``mean_`` and ``scale_`` are saved with the weights).

    Raises:
        UsageError: On an unknown classifier or option, or features of the wrong shape.
    """
    options = resolve_options(name, options)  # idempotent: resolved options pass unchanged
    if not len(data.train_y):
        raise UsageError("the training split is empty")
    scaler = StandardScaler().fit(data.train_x)
    scaled = {split: scaler.transform(getattr(data, f"{split}_x")).astype(np.float32)
              for split in ("train", "val", "test")}
    result = CLASSIFIERS[name].fit(data, scaled, options, seed, log)
    return result, scaler
