"""A fast small network for CIFAR-10-sized data, after Keller Jordan's airbench.

Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU" (2024, arXiv:2404.00498):
no residual connections; a frozen 2x2 patch-whitening first layer computed from
the training images; three conv groups (conv, max-pool, batch norm, GELU, conv,
batch norm, GELU); max-pooling and a scaled linear head. Trained with large
batches, label smoothing, flip-and-translate augmentation and flip TTA (the
``fast`` recipe).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Whitening(nn.Module):
    """2x2 convolution whose filters whiten the image patches (eigenvectors of their covariance).

    The filters are set from data by :meth:`initialize_from_data` and are not
    trained (``requires_grad=False``); the bias is trained.
    """

    def __init__(self, channels: int, eps: float = 5e-4):
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * 4 * channels, kernel_size=2, padding=0, bias=True)
        self.conv.weight.requires_grad_(False)
        self.eps = eps

    @torch.no_grad()
    def initialize_from_data(self, images: torch.Tensor) -> None:
        """Set the filters from normalized images ``(N, C, H, W)`` (a few thousand suffice)."""
        c = images.shape[1]
        patches = images.unfold(2, 2, 1).unfold(3, 2, 1)  # (N, C, H-1, W-1, 2, 2)
        patches = patches.transpose(1, 3).reshape(-1, c * 4).double()  # (N*(H-1)*(W-1), C*2*2)
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + self.eps)[:, None]).view(c * 4, c, 2, 2)
        filters = filters.flip(0)  # largest eigenvalue first
        self.conv.weight.copy_(torch.cat([filters, -filters]).to(self.conv.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConvGroup(nn.Sequential):
    """conv 3x3, max-pool 2x2, BN, GELU, conv 3x3, BN, GELU: ``(B, in, H, W) -> (B, out, H/2, W/2)``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(out_ch),
            nn.GELU(), nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.GELU(),
        )


class FastCNN(nn.Module):
    """The airbench94-style network; see the module docstring."""

    def __init__(self, channels: int, num_classes: int, widths: tuple, head_scale: float):
        super().__init__()
        self.whiten = Whitening(channels)
        w0 = self.whiten.conv.out_channels
        self.groups = nn.Sequential(ConvGroup(w0, widths[0]), ConvGroup(widths[0], widths[1]),
                                    ConvGroup(widths[1], widths[2]))
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.head_scale = head_scale

    def initialize_from_data(self, images: torch.Tensor) -> None:
        """Whitening filters from normalized training images; called by ``fit`` before training."""
        self.whiten.initialize_from_data(images)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(F.gelu(self.whiten(x)))  # (B, C, H, W) -> (B, W3, H/8, W/8)
        x = torch.amax(x, dim=(2, 3))  # global max-pool -> (B, W3)
        return self.head(x) * self.head_scale


def fast_cnn(
    *,
    channels: int,
    image_size: tuple[int, int],
    num_classes: int,
    widths: tuple,  # filters of the three conv groups
    head_scale: float,  # airbench's output temperature
) -> nn.Module:
    """airbench94's network: about 1.97 M parameters at 32x32x3 with 10 classes.

    Input ``(B, C, H, W)``, ``H, W >= 16``. Its whitening filters are computed from
    the training images when training starts (``initialize_from_data``).
    """
    return FastCNN(channels, num_classes, tuple(widths), head_scale)
