"""The NumPy MLP and the activation functions, checked against torch autograd
(float64), central finite differences, scipy and torch.optim."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import log_softmax as scipy_log_softmax

from imgclf.errors import UsageError
from imgclf.numpy_nn.activations import ACTIVATIONS, GRID, get_activation, properties
from imgclf.numpy_nn.numpy_mlp import (
    MLP,
    SGD,
    ActivationLayer,
    Dense,
    Dropout,
    MLPConfig,
    Softmax,
    cross_entropy,
    log_softmax,
    train_mlp,
)

#: Independent implementations: torch's own functions.
TORCH = {
    "relu": F.relu, "leaky-relu": lambda x: F.leaky_relu(x, 0.2), "elu": F.elu, "selu": F.selu,
    "gelu": F.gelu, "silu": F.silu, "mish": F.mish, "softplus": F.softplus, "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}
CASES = [(name, {"negative_slope": 0.2} if name == "leaky-relu" else {}) for name in ACTIVATIONS] + [
    ("elu", {"alpha": 0.5}), ("elu", {"alpha": 2.0})]


def relative_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def torch_reference(name, kwargs):
    if name == "elu":
        return lambda x: F.elu(x, alpha=kwargs.get("alpha", 1.0))
    return TORCH[name]


@pytest.mark.parametrize("name, kwargs", CASES)
def test_activation_and_its_derivative_match_torch_autograd(name, kwargs):
    activation = get_activation(name, **kwargs)
    x = np.concatenate([np.random.default_rng(0).uniform(-6, 6, 2000), [0.0, -1e-7, 1e-7, -30.0, 30.0]])
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = torch_reference(name, kwargs)(xt)
    (grad,) = torch.autograd.grad(y.sum(), xt)
    assert relative_error(activation.function(x), y.detach().numpy()) < 1e-12
    assert relative_error(activation.derivative(x), grad.numpy()) < 1e-10  # x = 0 included: torch's convention
    assert activation.function(x.astype(np.float32)).dtype == np.float32


@pytest.mark.parametrize("name, kwargs", CASES)
def test_derivative_matches_central_differences(name, kwargs):
    activation = get_activation(name, **kwargs)
    x = np.random.default_rng(1).uniform(-5, 5, 500)
    x = x[np.abs(x) > 1e-3]  # away from the kinks
    h = 1e-6
    numeric = (activation.function(x + h) - activation.function(x - h)) / (2 * h)
    assert relative_error(activation.derivative(x), numeric) < 1e-6


@pytest.mark.parametrize("name, kwargs", CASES)
def test_declared_range_agrees_with_the_function(name, kwargs):
    activation = get_activation(name, **kwargs)
    y = activation.function(GRID)
    assert y.min() >= activation.lower - 1e-9
    if math.isfinite(activation.lower):
        assert y.min() == pytest.approx(activation.lower, abs=1e-6 if activation.lower_attained else 1e-3)
    else:
        assert y.min() < -0.1 * 50 * min(1, kwargs.get("negative_slope", 1))
    if math.isfinite(activation.upper):
        assert y.max() <= activation.upper + 1e-12 and y.max() == pytest.approx(activation.upper, abs=1e-6)
    else:
        assert y.max() > 40


def test_properties_table_says_what_the_textbooks_say():
    p = {name: properties(get_activation(name)) for name in ACTIVATIONS}
    assert p["tanh"].monotonic and p["tanh"].zero_centred and p["tanh"].saturating == "both"
    assert p["sigmoid"].saturating == "both" and not p["sigmoid"].zero_centred
    assert p["sigmoid"].derivative_at_0 == pytest.approx(0.25)
    assert not p["gelu"].monotonic and not p["silu"].monotonic and not p["mish"].monotonic
    assert p["relu"].saturating == "left" and not p["relu"].smooth and p["relu"].range == "[0, inf)"
    assert p["leaky-relu"].saturating == "none"
    assert p["elu"].smooth and p["elu"].range == "(-1, inf)"
    elu_half = properties(get_activation("elu", alpha=0.5))
    assert not elu_half.smooth and elu_half.derivative_at_0 == 0.5  # the kink at alpha != 1
    assert p["mish"].derivative_at_0 == pytest.approx(0.6)
    with pytest.raises(UsageError, match="valid choices"):
        get_activation("relu6")


# -- the MLP -------------------------------------------------------------------


def layer_gradients_match_torch(layer, torch_forward, x, params_torch=()):
    """Run ``layer`` forward/backward in float64 against ``torch_forward`` with autograd."""
    rng = np.random.default_rng(3)
    out = layer.forward(x, training=True)
    upstream = rng.normal(size=out.shape)
    dx = layer.backward(upstream)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch_forward(xt)
    grads = torch.autograd.grad((yt * torch.tensor(upstream)).sum(), [xt, *params_torch])
    assert relative_error(out, yt.detach().numpy()) < 1e-12
    assert relative_error(dx, grads[0].numpy()) < 1e-5
    for ours, theirs in zip(layer.grads, grads[1:], strict=True):
        assert relative_error(ours, theirs.numpy()) < 1e-5


def test_imgclf_activations_plots_every_activation(tmp_path):
    """The command with its defaults: all ten activations in one figure (a grid with empty panels left over)."""
    from imgclf.cli import main

    assert main(["activations", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "activations.png").stat().st_size > 10_000
    table = (tmp_path / "activations.md").read_text()
    assert all(f"| {name} " in table for name in ACTIVATIONS)


def test_dense_backward_matches_autograd():
    rng = np.random.default_rng(0)
    layer = Dense(7, 5, init="he", rng=rng, dtype=np.float64)
    w, b = (torch.tensor(p, requires_grad=True) for p in layer.params)
    layer_gradients_match_torch(layer, lambda x: x @ w + b, rng.normal(size=(11, 7)), (w, b))


@pytest.mark.parametrize("name, kwargs", CASES)
def test_activation_layer_backward_matches_autograd(name, kwargs):
    x = np.random.default_rng(0).normal(scale=3, size=(9, 6))
    layer_gradients_match_torch(ActivationLayer(get_activation(name, **kwargs)), torch_reference(name, kwargs), x)


def test_softmax_and_dropout_backward_match_autograd():
    x = np.random.default_rng(0).normal(scale=3, size=(8, 5))
    layer_gradients_match_torch(Softmax(), lambda t: torch.softmax(t, 1), x)
    dropout = Dropout(0.4, rng=np.random.default_rng(5))
    dropout.forward(x, training=True)
    mask = torch.tensor(dropout._mask)
    dropout.rng = np.random.default_rng(5)  # the same mask again
    layer_gradients_match_torch(dropout, lambda t: t * mask, x)
    assert dropout.forward(x, training=False) is x


def test_cross_entropy_is_stable_and_matches_torch():
    logits = np.array([[1e4, 0.0, -1e4], [3.0, 2.0, 1.0]])
    assert np.isfinite(log_softmax(logits)).all()
    assert relative_error(log_softmax(logits), scipy_log_softmax(logits, axis=1)) < 1e-12
    rng = np.random.default_rng(0)
    z, y = rng.normal(scale=4, size=(16, 10)), rng.integers(0, 10, 16)
    loss, grad = cross_entropy(z, y)
    zt = torch.tensor(z, requires_grad=True)
    expected = F.cross_entropy(zt, torch.tensor(y))
    (grad_t,) = torch.autograd.grad(expected, zt)
    assert loss == pytest.approx(expected.item(), rel=1e-12)
    assert relative_error(grad, grad_t.numpy()) < 1e-10


def make_mlp(activation="elu", dropout=0.0):
    return MLP(12, 4, hidden=(9, 7), activation=activation, dropout=dropout, dtype="float64", seed=0)


@pytest.mark.parametrize("activation", ["relu", "elu", "tanh", "gelu"])
def test_whole_mlp_gradients_match_autograd(activation):
    mlp = make_mlp(activation)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(10, 12)), rng.integers(0, 4, 10)
    loss, grad = cross_entropy(mlp.forward(x, training=True), y)
    mlp.backward(grad)
    params = [torch.tensor(p, requires_grad=True) for p in mlp.params]
    h = torch.tensor(x)
    act = torch_reference(activation, {})
    for i in range(0, len(params) - 2, 2):
        h = act(h @ params[i] + params[i + 1])
    logits = h @ params[-2] + params[-1]
    expected = F.cross_entropy(logits, torch.tensor(y))
    grads = torch.autograd.grad(expected, params)
    assert loss == pytest.approx(expected.item(), rel=1e-12)
    for ours, theirs in zip(mlp.grads, grads, strict=True):
        assert relative_error(ours, theirs.numpy()) < 1e-5


def test_whole_mlp_gradients_match_central_differences():
    mlp = make_mlp("tanh")
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(6, 12)), rng.integers(0, 4, 6)
    _, grad = cross_entropy(mlp.forward(x), y)
    mlp.backward(grad)
    h = 1e-6
    for param, analytic in zip(mlp.params, mlp.grads, strict=True):
        for index in [tuple(rng.integers(0, s) for s in param.shape) for _ in range(5)]:
            original = param[index]
            param[index] = original + h
            up, _ = cross_entropy(mlp.forward(x), y)
            param[index] = original - h
            down, _ = cross_entropy(mlp.forward(x), y)
            param[index] = original
            assert analytic[index] == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9)


def test_sgd_matches_torch_sgd_with_momentum_and_weight_decay():
    mlp = make_mlp("relu")
    params = [torch.tensor(p.copy(), requires_grad=True) for p in mlp.params]
    torch_sgd = torch.optim.SGD([{"params": params[0::2], "weight_decay": 0.01},  # weights decayed, biases not
                                 {"params": params[1::2], "weight_decay": 0.0}], lr=0.1, momentum=0.9)
    ours = SGD(mlp, lr=0.1, momentum=0.9, weight_decay=0.01)
    rng = np.random.default_rng(0)
    for _ in range(4):
        x, y = rng.normal(size=(8, 12)), rng.integers(0, 4, 8)
        _, grad = cross_entropy(mlp.forward(x), y)
        mlp.backward(grad)
        for p, g in zip(params, mlp.grads, strict=True):
            p.grad = torch.tensor(g.copy())
        ours.step()
        torch_sgd.step()
    for mine, theirs in zip(mlp.params, params, strict=True):
        assert relative_error(mine, theirs.detach().numpy()) < 1e-10


def test_he_and_xavier_initialisation_scales():
    rng = np.random.default_rng(0)
    he = Dense(1000, 500, init="he", rng=rng).params[0]
    assert he.dtype == np.float32 and he.std() == pytest.approx(math.sqrt(2 / 1000), rel=0.02)
    xavier = Dense(300, 200, init="xavier", rng=rng).params[0]
    limit = math.sqrt(6 / 500)
    assert np.abs(xavier).max() <= limit and np.abs(xavier).max() > 0.99 * limit


def test_training_on_digits_learns_and_keeps_the_best_epoch():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    lines = []
    result = train_mlp(x_train, y_train, x_val, y_val, 10, MLPConfig(epochs=30, hidden=(64,), dropout=0.1),
                       seed=0, log=lines.append)
    assert result.best_val_accuracy > 0.95
    assert result.best_val_accuracy == max(row["val_accuracy"] for row in result.history)
    assert (result.model.predict_logits(x_val).argmax(1) == y_val).mean() == result.best_val_accuracy
    assert result.history[-1]["lr"] < 0.05 * 0.01  # cosine decay to about 0
    again = train_mlp(x_train, y_train, x_val, y_val, 10, MLPConfig(epochs=30, hidden=(64,), dropout=0.1),
                      seed=0, log=lambda line: None)
    assert again.history == [{**row, "seconds": again.history[i]["seconds"]} for i, row in enumerate(result.history)]
    noise = np.random.default_rng(0).permutation(y_val)  # validation labels with no signal: no lasting improvement
    stopped = train_mlp(x_train, y_train, x_val, noise, 10, MLPConfig(epochs=50, hidden=(64,), early_stopping=3),
                        log=lambda line: None)
    assert stopped.stopped_early and len(stopped.history) < 50
    assert len(stopped.history) - stopped.best_epoch == 3
    assert (stopped.model.predict_logits(x_val).argmax(1) == noise).mean() == stopped.best_val_accuracy


@pytest.mark.parametrize("settings, message", [
    ({"hidden": (0,)}, "hidden"), ({"init": "lecun"}, "valid choices: he, xavier"), ({"dropout": 1.0}, "dropout"),
    ({"activation": "swishy"}, "unknown activation"), ({"schedule": "step"}, "valid choices: constant, cosine"),
])
def test_bad_settings_are_one_clear_error(settings, message):
    with pytest.raises(UsageError, match=message):
        MLPConfig(**settings)


def test_bad_arrays_are_one_clear_error():
    x, y = np.zeros((10, 3), np.float32), np.zeros(10, np.int64)
    with pytest.raises(UsageError, match="labels must be in"):
        train_mlp(x, y + 5, x, y, 3)
    with pytest.raises(UsageError, match="one label each"):
        train_mlp(x, y[:5], x, y, 3)
