"""A multilayer perceptron written from scratch in NumPy: forward and backward
passes by hand, softmax cross-entropy, He and Xavier initialisation, mini-batch
SGD with momentum, L2 weight decay, dropout and early stopping.

No torch inside, and fast: vectorised over the batch, float32 by default. The tests check every
backward pass against torch autograd in float64 and against central finite
differences.

Shapes: inputs ``(N, D)``, logits ``(N, K)``, labels ``int`` ``(N,)`` in ``[0, K)``.

References: backpropagation (Rumelhart, Hinton and Williams 1986); He
initialisation (He et al. 2015, "Delving Deep into Rectifiers"); Xavier/Glorot
initialisation (Glorot and Bengio 2010); dropout (Srivastava et al. 2014, the
inverted form); SGD with momentum (Polyak 1964, in PyTorch's form
``v = mu * v + g; w -= lr * v``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from imgclf.errors import UsageError
from imgclf.numpy_nn.activations import Activation, get_activation

INITS = ("he", "xavier")
SCHEDULES = ("constant", "cosine")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise ``log softmax`` with the log-sum-exp shift (no overflow for any finite logits).

    Args:
        logits: ``(N, K)`` float array.

    Returns:
        ``(N, K)``, same dtype; each row's ``exp`` sums to 1.
    """
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax ``(N, K)`` -> ``(N, K)`` probabilities, computed stably."""
    return np.exp(log_softmax(logits))


def softmax_backward(probabilities: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Vector-Jacobian product of softmax: ``dL/dz = s * (g - sum(g * s))`` per row.

    Args:
        probabilities: The softmax output ``s`` ``(N, K)``.
        grad: ``dL/ds`` ``(N, K)``.
    """
    return probabilities * (grad - (grad * probabilities).sum(axis=1, keepdims=True))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy and its gradient with respect to the logits.

    ``L = -mean_i log softmax(z_i)[y_i]``; ``dL/dz = (softmax(z) - onehot(y)) / N``.

    Args:
        logits: ``(N, K)`` float array.
        labels: ``int`` ``(N,)`` in ``[0, K)``.

    Returns:
        The loss (a Python float, in nats) and ``dL/dlogits`` ``(N, K)`` in the logits' dtype.
    """
    n = len(labels)
    log_p = log_softmax(logits)
    rows = np.arange(n)
    loss = -float(log_p[rows, labels].mean())
    grad = np.exp(log_p)
    grad[rows, labels] -= 1
    return loss, grad / n



def _saved(array: np.ndarray | None) -> np.ndarray:
    """What a layer's forward pass saved for its backward pass.

    Raises:
        RuntimeError: If backward is called before forward.
    """
    if array is None:
        raise RuntimeError("backward() called before forward(): the layer has no saved input")
    return array

class Layer:
    """A layer: ``forward`` caches what ``backward`` needs; ``params`` and
    ``grads`` are parallel lists of arrays (empty for parameter-free layers)."""

    params: list[np.ndarray]
    grads: list[np.ndarray]

    def forward(self, x: np.ndarray, *, training: bool) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """``dL/d input`` from ``dL/d output``; fills ``grads``."""
        raise NotImplementedError


class Dense(Layer):
    """``y = x @ W + b`` with ``W`` ``(D_in, D_out)`` and ``b`` ``(D_out,)``.

    Args:
        fan_in, fan_out: Sizes.
        init: ``"he"`` (normal, std ``sqrt(2 / fan_in)``, for ReLU-like
            activations) or ``"xavier"`` (uniform, limit ``sqrt(6 / (fan_in + fan_out))``,
            for tanh and sigmoid). Biases start at 0.
        rng: Source of the initial weights.
        dtype: ``float32`` (default) or ``float64``.
    """

    def __init__(self, fan_in: int, fan_out: int, *, init: str, rng: np.random.Generator, dtype=np.float32):
        if init == "he":
            weight = rng.normal(0.0, math.sqrt(2.0 / fan_in), size=(fan_in, fan_out))
        elif init == "xavier":
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            weight = rng.uniform(-limit, limit, size=(fan_in, fan_out))
        else:
            raise UsageError(f"unknown init {init!r}; valid choices: {', '.join(INITS)}")
        self.params = [weight.astype(dtype), np.zeros(fan_out, dtype=dtype)]
        self.grads = [np.zeros_like(p) for p in self.params]
        self._x: np.ndarray | None = None

    def forward(self, x: np.ndarray, *, training: bool) -> np.ndarray:
        self._x = x
        weight, bias = self.params
        return x @ weight + bias

    def backward(self, grad: np.ndarray) -> np.ndarray:
        weight = self.params[0]
        self.grads[0][...] = _saved(self._x).T @ grad  # (D_in, N) @ (N, D_out)
        self.grads[1][...] = grad.sum(axis=0)
        return grad @ weight.T  # (N, D_out) @ (D_out, D_in)


class ActivationLayer(Layer):
    """An elementwise activation from :mod:`imgclf.numpy_nn.activations`;
    backward is ``grad * f'(x)``."""

    def __init__(self, activation: Activation):
        self.activation, self.params, self.grads = activation, [], []
        self._x: np.ndarray | None = None

    def forward(self, x: np.ndarray, *, training: bool) -> np.ndarray:
        self._x = x
        return self.activation.function(x)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return grad * self.activation.derivative(_saved(self._x))


class Softmax(Layer):
    """Softmax as a layer (for a network that outputs probabilities); training
    uses :func:`cross_entropy` on logits instead, which is stabler and cheaper."""

    def __init__(self):
        self.params, self.grads = [], []
        self._s: np.ndarray | None = None

    def forward(self, x: np.ndarray, *, training: bool) -> np.ndarray:
        self._s = softmax(x)
        return self._s

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return softmax_backward(_saved(self._s), grad)


class Dropout(Layer):
    """Inverted dropout: in training, zero each unit with probability ``p`` and
    scale the rest by ``1 / (1 - p)``; identity at evaluation.

    Args:
        p: Drop probability in ``[0, 1)``.
        rng: Source of the masks.
    """

    def __init__(self, p: float, *, rng: np.random.Generator):
        if not 0 <= p < 1:
            raise UsageError(f"dropout must be in [0, 1), got {p}")
        self.p, self.rng, self.params, self.grads = p, rng, [], []
        self._mask: np.ndarray | None = None

    def forward(self, x: np.ndarray, *, training: bool) -> np.ndarray:
        if not training or self.p == 0:
            self._mask = None
            return x
        self._mask = (self.rng.random(x.shape, dtype=np.float32) >= self.p).astype(x.dtype) / (1 - self.p)
        return x * self._mask

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return grad if self._mask is None else grad * self._mask


@dataclass(frozen=True)
class MLPConfig:
    """Architecture and optimisation settings of :func:`train_mlp`.

    Attributes:
        hidden: Units of each hidden layer, e.g. ``(128,)``; ``()`` is softmax regression.
        activation: A name of :data:`imgclf.numpy_nn.activations.ACTIVATIONS`.
        init: ``"he"`` or ``"xavier"``.
        dropout: Drop probability after each hidden activation.
        epochs: Passes over the training set.
        batch_size: Examples per SGD step.
        lr: Learning rate (peak, under ``cosine``).
        schedule: ``"constant"`` or ``"cosine"`` (decay to 0 over all steps).
        momentum: Momentum coefficient ``mu`` in ``[0, 1)``.
        weight_decay: L2 coefficient ``lambda``: adds ``lambda * W`` to each
            weight matrix's gradient (biases are not decayed).
        early_stopping: Stop after this many epochs without a better
            validation accuracy (0: never); the best epoch's weights are kept.
        dtype: ``"float32"`` or ``"float64"``.
    """

    hidden: tuple[int, ...] = (128,)  # one hidden layer of 128 units
    activation: str = "relu"
    init: str = "he"  # he for ReLU-like activations, xavier for tanh/sigmoid
    dropout: float = 0.0
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.05
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    early_stopping: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        checks = [
            (all(h >= 1 for h in self.hidden), f"hidden sizes must be >= 1, got {list(self.hidden)}"),
            (self.init in INITS, f"unknown init {self.init!r}; valid choices: {', '.join(INITS)}"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; valid choices: {', '.join(SCHEDULES)}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (self.early_stopping >= 0, f"early stopping must be >= 0, got {self.early_stopping}"),
            (self.dtype in ("float32", "float64"), f"dtype must be float32 or float64, got {self.dtype!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        get_activation(self.activation)  # raises on an unknown name

    def to_dict(self) -> dict:
        return {**asdict(self), "hidden": list(self.hidden)}


class MLP:
    """Dense -> activation (-> dropout) per hidden layer, then a dense head giving logits.

    Args:
        n_inputs: Features per example ``D``.
        n_classes: Classes ``K``.
        hidden, activation, init, dropout, dtype: As in :class:`MLPConfig`.
        seed: Seeds the initial weights and the dropout masks.
    """

    def __init__(self, n_inputs: int, n_classes: int, *, hidden: tuple[int, ...] = (128,), activation: str = "relu",
                 init: str = "he", dropout: float = 0.0, dtype: str = "float32", seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.layers: list[Layer] = []
        width = n_inputs
        for units in hidden:
            self.layers += [Dense(width, units, init=init, rng=rng, dtype=self.dtype),
                            ActivationLayer(get_activation(activation))]
            if dropout:
                self.layers.append(Dropout(dropout, rng=rng))
            width = units
        self.layers.append(Dense(width, n_classes, init=init, rng=rng, dtype=self.dtype))

    @property
    def params(self) -> list[np.ndarray]:
        return [p for layer in self.layers for p in layer.params]

    @property
    def grads(self) -> list[np.ndarray]:
        return [g for layer in self.layers for g in layer.grads]

    def forward(self, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        """Logits ``(N, K)`` of inputs ``(N, D)`` (cast to the network's dtype)."""
        x = np.asarray(x, dtype=self.dtype)
        for layer in self.layers:
            x = layer.forward(x, training=training)
        return x

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """Backpropagate ``dL/dlogits`` ``(N, K)``; fills every layer's ``grads``
        and returns ``dL/dx`` ``(N, D)``."""
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        return grad

    def predict_logits(self, x: np.ndarray, *, batch_size: int = 4096) -> np.ndarray:
        """Evaluation-mode logits ``(N, K)``, in batches."""
        return np.concatenate([self.forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]) \
            if len(x) else np.zeros((0, self.layers[-1].params[1].shape[0]), self.dtype)

    def state(self) -> dict[str, np.ndarray]:
        """The weights by name (``dense0.weight``, ``dense0.bias``, ...), copies."""
        dense = [layer for layer in self.layers if isinstance(layer, Dense)]
        return {f"dense{i}.{kind}": p.copy() for i, layer in enumerate(dense)
                for kind, p in zip(("weight", "bias"), layer.params, strict=True)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Copy weights from :meth:`state`'s format into the network."""
        dense = [layer for layer in self.layers if isinstance(layer, Dense)]
        for i, layer in enumerate(dense):
            for p, kind in zip(layer.params, ("weight", "bias"), strict=True):
                p[...] = state[f"dense{i}.{kind}"]


class SGD:
    """Mini-batch SGD with momentum and L2 weight decay (PyTorch's form).

    ``g' = g + lambda * W`` (weight matrices only), ``v = mu * v + g'``, ``W -= lr * v``.
    """

    def __init__(self, model: MLP, *, lr: float, momentum: float, weight_decay: float):
        self.model, self.lr, self.momentum, self.weight_decay = model, lr, momentum, weight_decay
        self.velocity = [np.zeros_like(p) for p in model.params]

    def step(self) -> None:
        for p, g, v in zip(self.model.params, self.model.grads, self.velocity, strict=True):
            if self.weight_decay and p.ndim == 2:
                g = g + self.weight_decay * p
            v *= self.momentum
            v += g
            p -= self.lr * v


def accuracy_and_loss(model: MLP, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Top-1 accuracy in ``[0, 1]`` and mean cross-entropy of ``model`` on ``(x, y)``."""
    logits = model.predict_logits(x)
    loss, _ = cross_entropy(logits, y)
    return float((logits.argmax(1) == y).mean()), loss


@dataclass
class MLPResult:
    """What :func:`train_mlp` returns.

    Attributes:
        model: The network with the best epoch's weights loaded.
        history: Per epoch: ``epoch``, ``train_loss``, ``train_accuracy``,
            ``val_loss``, ``val_accuracy``, ``lr``, ``seconds``.
        best_epoch: The epoch (from 1) whose weights were kept.
        best_val_accuracy: Its validation accuracy.
        stopped_early: Early stopping ended training.
        seconds: Training wall time.
    """

    model: MLP
    history: list[dict[str, float]]
    best_epoch: int
    best_val_accuracy: float
    stopped_early: bool
    seconds: float


def train_mlp(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, n_classes: int,
              config: MLPConfig = MLPConfig(), *, seed: int = 0,
              log: Callable[[str], None] = print) -> MLPResult:
    """Train an :class:`MLP` with mini-batch SGD, validating after every epoch.

    Args:
        x_train, x_val: Features ``(N, D)``, any float dtype (cast to ``config.dtype``).
        y_train, y_val: Labels ``int`` ``(N,)`` in ``[0, n_classes)``.
        n_classes: ``K``.
        config: Architecture and optimisation.
        seed: Seeds the weights, the batch order and the dropout masks.
        log: Receives one line per epoch.

    Returns:
        An :class:`MLPResult`; the model holds the weights of the epoch with the
        best validation accuracy (ties go to the later epoch).

    Raises:
        UsageError: If the arrays' shapes disagree or a label is out of range.
    """
    for name, x, y in (("train", x_train, y_train), ("val", x_val, y_val)):
        if x.ndim != 2 or len(x) != len(y):
            raise UsageError(f"{name} features must be (N, D) with one label each; got {x.shape} and {y.shape}")
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise UsageError(f"{name} labels must be in [0, {n_classes}); got {y.min()}..{y.max()}")
    if x_train.shape[1] != x_val.shape[1]:
        raise UsageError(f"train and val features differ in width: {x_train.shape[1]} vs {x_val.shape[1]}")
    dtype = np.dtype(config.dtype)
    x_train, x_val = x_train.astype(dtype, copy=False), x_val.astype(dtype, copy=False)
    model = MLP(x_train.shape[1], n_classes, hidden=config.hidden, activation=config.activation, init=config.init,
                dropout=config.dropout, dtype=config.dtype, seed=seed)
    optimizer = SGD(model, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    order_rng = np.random.default_rng([seed, 1])
    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    total_steps, step = config.epochs * steps_per_epoch, 0
    history: list[dict[str, float]] = []
    best = (-1.0, 0, model.state())
    stale, stopped_early, start = 0, False, time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        began = time.perf_counter()
        order = order_rng.permutation(len(x_train))
        loss_sum = correct = 0.0
        for i in range(0, len(order), config.batch_size):
            if config.schedule == "cosine":
                optimizer.lr = 0.5 * config.lr * (1 + math.cos(math.pi * step / total_steps))
            rows = order[i:i + config.batch_size]
            logits = model.forward(x_train[rows], training=True)
            loss, grad = cross_entropy(logits, y_train[rows])
            model.backward(grad)
            optimizer.step()
            step += 1
            loss_sum += loss * len(rows)
            correct += int((logits.argmax(1) == y_train[rows]).sum())
        val_accuracy, val_loss = accuracy_and_loss(model, x_val, y_val)
        history.append({"epoch": epoch, "train_loss": loss_sum / len(x_train),
                        "train_accuracy": correct / len(x_train), "val_loss": val_loss,
                        "val_accuracy": val_accuracy, "lr": optimizer.lr, "seconds": time.perf_counter() - began})
        row = history[-1]
        log(f"epoch {epoch:>3}/{config.epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}  "
            f"val loss {val_loss:.4f} acc {val_accuracy:.4f}  {row['seconds']:.1f}s")
        if not math.isfinite(row["train_loss"]):
            raise UsageError(f"training diverged at epoch {epoch} (loss {row['train_loss']}); lower the learning "
                             f"rate (now {config.lr})")
        if val_accuracy >= best[0]:
            best, stale = (val_accuracy, epoch, model.state()), 0
        else:
            stale += 1
            if config.early_stopping and stale >= config.early_stopping:
                stopped_early = True
                log(f"early stopping: no better validation accuracy for {stale} epochs")
                break
    model.load_state(best[2])
    return MLPResult(model, history, best[1], best[0], stopped_early, time.perf_counter() - start)
