"""A vision transformer for small images (torchvision's ``VisionTransformer``)."""

from __future__ import annotations

from torch import nn

from imgclf.errors import UsageError


def vit(
    *,
    channels: int,
    image_size: tuple[int, int],
    num_classes: int,
    patch: int,  # patch side in pixels; 4 at 32 px gives 64 tokens
    depth: int,  # transformer encoder layers
    width: int,  # token dimension
    heads: int,  # attention heads (width / heads = 64 per head)
    mlp_ratio: int,  # MLP hidden size = mlp_ratio * width
    dropout: float,
) -> nn.Module:
    """ViT of Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021), sized for
    32 px images trained from scratch: 4x4 patches, 6 pre-norm encoder layers of width
    192 with 3 heads and MLP ratio 2 (1.8 M parameters with 10 classes), a class token
    and learned position embeddings; the head starts small and random rather than at
    torchvision's zeros. Small ViTs need augmentation and label smoothing
    to train well from scratch (``--augment flip-crop --label-smoothing 0.1``).

    Input ``(B, C, S, S)``: square, with ``S`` a multiple of ``patch``.

    Raises:
        UsageError: For non-square images, a size not divisible by ``patch``, or
            ``width`` not divisible by ``heads``.
    """
    from torchvision.models.vision_transformer import VisionTransformer

    height, width_px = image_size
    if height != width_px or height % patch:
        raise UsageError(f"vit needs square images whose side is a multiple of patch={patch}, got {width_px}x{height}")
    if width % heads:
        raise UsageError(f"vit needs width divisible by heads, got width={width}, heads={heads}")
    net = VisionTransformer(
        image_size=height, patch_size=patch, num_layers=depth, num_heads=heads, hidden_dim=width,
        mlp_dim=mlp_ratio * width, dropout=dropout, attention_dropout=dropout, num_classes=num_classes,
    )
    if channels != 3:  # torchvision's patch projection expects RGB
        net.conv_proj = nn.Conv2d(channels, width, kernel_size=patch, stride=patch)
    # torchvision zero-initializes the head, so no other layer gets a gradient on the first
    # step; a small random head (truncated normal, std 0.02, as timm's ViTs) trains every layer at once.
    nn.init.trunc_normal_(net.heads.head.weight, std=0.02)
    return net
