"""Small architectures: MLP, simple CNN, CNN with batch norm, and the Keras CIFAR-10
example network. Each builder returns the body that
maps normalized images ``(B, C, H, W)`` to logits ``(B, K)``."""

from __future__ import annotations

from torch import nn

from imgclf.errors import UsageError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "elu": nn.ELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def mlp(
    *,
    channels: int,
    image_size: tuple[int, int],
    num_classes: int,
    hidden: int,  # units per hidden layer
    depth: int,  # number of hidden layers
    activation: str,  # relu | gelu | elu | tanh | silu
    dropout: float,  # after each hidden layer
) -> nn.Module:
    """Multilayer perceptron: flatten, ``depth`` hidden layers, a linear head.

    Input ``(B, C, H, W)``; parameters ``(C*H*W + 1)*hidden + (depth-1)*(hidden+1)*hidden
    + (hidden+1)*K`` (101,770 for MNIST with the defaults).
    """
    if activation not in ACTIVATIONS:
        raise UsageError(f"unknown activation {activation!r}; valid choices: {', '.join(ACTIVATIONS)}")
    if hidden < 1 or depth < 0 or not 0 <= dropout < 1:
        raise UsageError("mlp needs hidden >= 1, depth >= 0 and dropout in [0, 1)")
    layers: list[nn.Module] = [nn.Flatten()]  # (B, C, H, W) -> (B, C*H*W)
    width = channels * image_size[0] * image_size[1]
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def simple_cnn(
    *, channels: int, image_size: tuple[int, int], num_classes: int, filters: int
) -> nn.Module:
    """Two same-padded 3x3 convolutions of ``filters`` channels, each with ReLU and 2x2 max-pooling, and a linear head.

    Input ``(B, C, H, W)`` with ``H, W >= 4``; 28x28x1 input with 32 filters has
    25,354 parameters.
    """
    h, w = image_size[0] // 4, image_size[1] // 4
    return nn.Sequential(
        nn.Conv2d(channels, filters, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # (B, F, H, W) -> (B, F, H/2, W/2)
        nn.Conv2d(filters, filters, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # -> (B, F, H/4, W/4)
        nn.Flatten(),  # -> (B, F*H/4*W/4)
        nn.Linear(filters * h * w, num_classes),
    )


def cnn(
    *,
    channels: int,
    image_size: tuple[int, int],
    num_classes: int,
    widths: tuple,  # filters of the three blocks
    dropout: float,  # after each block, and 2x before the head
) -> nn.Module:
    """A small VGG-style CNN with batch norm.

    Input ``(B, C, H, W)`` with ``H, W >= 8``; about 0.11 M parameters at 32x32x3
    with the defaults and 10 classes.
    """
    if len(widths) != 3 or not 0 <= dropout < 0.5:
        raise UsageError("cnn needs three widths and dropout in [0, 0.5)")
    layers: list[nn.Module] = []
    in_ch = channels
    for width in widths:
        layers += [
            nn.Conv2d(in_ch, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # (B, W, H, W) -> (B, W, H/2, W/2)
            nn.Dropout(dropout),
        ]
        in_ch = width
    h, w = image_size[0] // 8, image_size[1] // 8
    layers += [
        nn.Flatten(),  # (B, W3, H/8, W/8) -> (B, W3*H/8*W/8)
        nn.Dropout(2 * dropout),
        nn.Linear(in_ch * h * w, num_classes),
    ]
    return nn.Sequential(*layers)


def keras_cnn(
    *,
    channels: int,
    image_size: tuple[int, int],
    num_classes: int,
    dropout: float,  # after each conv block; the dense layer's dropout is twice this
) -> nn.Module:
    """The network of Keras's classic ``cifar10_cnn.py`` example (about 73% test accuracy
    on CIFAR-10 there).

    Each block is a same-padded 3x3 conv, a valid 3x3 conv, 2x2 max-pooling and
    dropout; then dense 512 with ReLU and dropout, and a linear head. Input
    ``(B, C, H, W)`` with ``H, W >= 10``; 1,250,858 parameters at 32x32x3 with 10
    classes.
    """
    h, w = image_size
    for _ in range(2):  # valid conv then pooling: size -> (size - 2) // 2
        h, w = (h - 2) // 2, (w - 2) // 2
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(32, 32, 3), nn.ReLU(inplace=True),  # (B, 32, H, W) -> (B, 32, H-2, W-2)
        nn.MaxPool2d(2), nn.Dropout(dropout),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(64, 64, 3), nn.ReLU(inplace=True),
        nn.MaxPool2d(2), nn.Dropout(dropout),
        nn.Flatten(),  # (B, 64, h, w) -> (B, 64*h*w)
        nn.Linear(64 * h * w, 512), nn.ReLU(inplace=True), nn.Dropout(2 * dropout),
        nn.Linear(512, num_classes),
    )
