"""The MNIST networks of the adversarial-robustness literature, as their papers' code defines them, for the
published anchors (see the documentation's "Measured results"). Each builder returns the body that maps normalized
images ``(B, C, H, W)`` to logits ``(B, K)``; at 28x28x1 with 10 classes the layers and parameter counts are
the papers'.
"""

from __future__ import annotations

from torch import nn

from imgclf.errors import UsageError


def madry_cnn(*, channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """Madry et al.'s MNIST network ("Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018;
    their MNIST challenge's ``model.py``): two 5x5 same-padded convolutions of 32 and 64 channels, each with
    ReLU and 2x2 max-pooling, a dense layer of 1024 with ReLU, and a linear head.

    Input ``(B, C, H, W)`` with ``H, W >= 4``; 3,274,634 parameters at 28x28x1 with 10 classes.
    """
    h, w = image_size[0] // 4, image_size[1] // 4
    return nn.Sequential(
        nn.Conv2d(channels, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 32, H, W) -> (B, 32, H/2, W/2)
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),  # -> (B, 64, H/4, W/4)
        nn.Flatten(),  # -> (B, 64 * H/4 * W/4)
        nn.Linear(64 * h * w, 1024),
        nn.ReLU(),
        nn.Linear(1024, num_classes),
    )


def trades_cnn(*, channels: int, image_size: tuple[int, int], num_classes: int, dropout: float) -> nn.Module:
    """TRADES's ``SmallCNN`` (Zhang et al., "Theoretically Principled Trade-off between Robustness and
    Accuracy", ICML 2019; their ``models/small_cnn.py``): 3x3 unpadded convolutions 32, 32, pool, 64, 64, pool,
    each with ReLU; dense layers 200 (with dropout) and 200 with ReLU; a linear head initialised to zero, the
    convolutions to Kaiming-normal weights and zero biases, as their code does.

    Input ``(B, C, H, W)`` with ``H, W >= 14``; 312,202 parameters at 28x28x1 with 10 classes.
    """
    if not 0 <= dropout < 1:
        raise UsageError(f"trades-cnn needs dropout in [0, 1), got {dropout}")
    h, w = (((side - 4) // 2 - 4) // 2 for side in image_size)  # 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4
    if min(h, w) < 1:
        raise UsageError(f"trades-cnn needs images of at least 14x14 pixels, got {image_size}")
    head = nn.Linear(200, num_classes)
    body = nn.Sequential(
        nn.Conv2d(channels, 32, 3), nn.ReLU(),
        nn.Conv2d(32, 32, 3), nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 32, H-4, W-4) -> (B, 32, (H-4)/2, (W-4)/2)
        nn.Conv2d(32, 64, 3), nn.ReLU(),
        nn.Conv2d(64, 64, 3), nn.ReLU(),
        nn.MaxPool2d(2),  # -> (B, 64, h, w)
        nn.Flatten(),  # -> (B, 64 * h * w)
        nn.Linear(64 * h * w, 200), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(200, 200), nn.ReLU(),
        head,
    )
    for module in body:
        if isinstance(module, nn.Conv2d) and module.bias is not None:
            nn.init.kaiming_normal_(module.weight)
            nn.init.zeros_(module.bias)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return body


def fast_mnist_cnn(*, channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """The MNIST network of Wong, Rice and Kolter's fast adversarial training ("Fast is better than free:
    Revisiting adversarial training", ICLR 2020; their ``MNIST/mnist_net.py``): two 4x4 convolutions of stride
    2 (16 and 32 channels) with ReLU, a dense layer of 100 with ReLU, and a linear head.

    Input ``(B, C, H, W)`` with ``H, W >= 4``; 166,406 parameters at 28x28x1 with 10 classes.
    """
    h, w = (side // 2 // 2 for side in image_size)  # stride 2 twice: 28 -> 14 -> 7
    return nn.Sequential(
        nn.Conv2d(channels, 16, 4, stride=2, padding=1), nn.ReLU(),  # (B, C, H, W) -> (B, 16, H/2, W/2)
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),  # -> (B, 32, H/4, W/4)
        nn.Flatten(),  # -> (B, 32 * H/4 * W/4)
        nn.Linear(32 * h * w, 100), nn.ReLU(),
        nn.Linear(100, num_classes),
    )
