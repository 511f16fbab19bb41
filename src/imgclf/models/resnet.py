"""Residual networks for small images: ResNet-18, pre-activation ResNet-18, Wide ResNet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.errors import UsageError


def resnet18(*, channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """ResNet-18 for small images (11.2 M parameters with 10 classes).

    torchvision's ``resnet18`` with the ImageNet stem (7x7 stride-2 conv and
    max-pool) replaced by a 3x3 stride-1 conv, as for CIFAR-10 in He et al.,
    "Deep Residual Learning for Image Recognition" (CVPR 2016). Input
    ``(B, C, H, W)``; global average pooling makes any ``H, W >= 8`` work.
    """
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice, with an identity (or 1x1 conv) shortcut taken after the first BN-ReLU.

    He, Zhang, Ren and Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + shortcut


class PreActResNet(nn.Module):
    """Stem conv, stages of :class:`PreActBlock`, BN-ReLU, global average pooling, linear head."""

    def __init__(self, channels: int, num_classes: int, *, stem_width: int, widths: list[int],
                 blocks: list[int], dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Conv2d(channels, stem_width, 3, padding=1, bias=False)
        in_planes = stem_width
        stages = []
        for i, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1  # each later stage halves the resolution
                stages.append(PreActBlock(in_planes, width, stride, dropout))
                in_planes = width
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_planes)
        self.head = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.stages(self.stem(x))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))  # (B, C, h, w) -> (B, C)


def preact_resnet18(*, channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """Pre-activation ResNet-18 for 32x32 images (11.2 M parameters with 10 classes).

    The architecture of Wong, Rice and Kolter, "Fast is better than free" (ICLR
    2020) and Rice et al., "Overfitting in adversarially robust deep learning"
    (ICML 2020). Input ``(B, C, H, W)`` with ``H, W >= 8``.
    """
    return PreActResNet(channels, num_classes, stem_width=64, widths=[64, 128, 256, 512], blocks=[2, 2, 2, 2])


def wide_resnet(
    *,
    channels: int,
    image_size: tuple[int, int],
    num_classes: int,
    depth: int,  # 6n + 4: 16, 22, 28, 34, 40
    width: int,  # widening factor k
    dropout: float,  # between the convolutions of each block
) -> nn.Module:
    """Wide ResNet, Zagoruyko and Komodakis, "Wide Residual Networks" (BMVC 2016).

    Three stages of ``(depth - 4) / 6`` pre-activation blocks of widths
    ``16k, 32k, 64k``. WRN-16-4 has 2.7 M parameters, WRN-28-10 36.5 M. Input
    ``(B, C, H, W)`` with ``H, W >= 8``.

    Raises:
        UsageError: If ``depth`` is not of the form ``6n + 4`` or ``width < 1``.
    """
    if (depth - 4) % 6 or depth < 10 or width < 1:
        raise UsageError(f"wide-resnet needs depth = 6n + 4 (10, 16, 22, 28, ...) and width >= 1, got {depth}, {width}")
    n = (depth - 4) // 6
    return PreActResNet(channels, num_classes, stem_width=16, widths=[16 * width, 32 * width, 64 * width],
                        blocks=[n, n, n], dropout=dropout)
