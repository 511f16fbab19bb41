"""Augmentation applied to whole batches at once, on whatever device holds them.

Every function takes ``float32`` images of shape ``(B, C, H, W)`` in ``[0, 1]``
and a :class:`torch.Generator` on the same device, draws one random choice per
image, and returns a new batch of the same shape and range. There is no
per-image Python work, which is what keeps small-image training fast (the
approach of airbench's ``CifarLoader``, Keller Jordan 2024).

Presets (``data.augment``):

* ``none``: identity.
* ``flip-crop``: random crop after 4 px zero padding, then horizontal flip with
  probability 1/2 (the standard CIFAR recipe; torchvision's
  ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``).
* ``flip-jitter``: horizontal flip, then colour jitter (brightness, contrast and
  saturation factors uniform in ``[0.8, 1.2]``), for photos resized when the data
  is loaded. ``seed000`` is its earlier name, still accepted.

torchvision's policies (transforms v2), applied image by image (each image its own
random draw, from torch's global generator, which training seeds and its state saves):

* ``randaugment[:n=2,m=9]``: RandAugment (Cubuk et al. 2020), ``n`` operations of
  magnitude ``m`` (of 31 levels).
* ``trivialaugment``: TrivialAugment Wide (Muller and Hutter 2021).
* ``autoaugment[:policy=imagenet]``: AutoAugment (Cubuk et al. 2019), policy
  ``imagenet``, ``cifar10`` or ``svhn``.
* ``random-erasing[:p=0.5]``: Random Erasing (Zhong et al. 2020) with probability ``p``.
* ``random-resized-crop[:scale=0.35]``: a crop of ``scale`` to 1 of the area (aspect
  ratio 3/4 to 4/3) resized back to the image size (Szegedy et al. 2015).

Noise, on the whole batch:

* ``gaussian-noise[:sigma=0.25]``: adds ``N(0, sigma^2)`` to every pixel, unclamped (the one part whose output
  leaves ``[0, 1]``): the training of Cohen, Rosenfeld and Kolter (ICML 2019) for a base classifier of randomized
  smoothing, which sees the same unclamped noise when :func:`imgclf.certification.certificates` samples it.

A setting joins parts with ``+``, applied in order: ``flip-crop+randaugment:n=2,m=9``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from imgclf.constraints import Constraint
from imgclf.errors import UsageError, unknown_choice

if TYPE_CHECKING:
    import torch

#: ``augment(images, generator) -> images``: a batch in, a batch of the same shape and range out.
Augmentation = Callable[["torch.Tensor", "torch.Generator"], "torch.Tensor"]
# torch is imported inside the functions: the configuration reads AUGMENTATIONS' names without it.


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    import torch

    return torch.rand(n, generator=gen, device=device).mul_(high - low).add_(low)


def random_flip(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    import torch

    flip = torch.rand(images.shape[0], generator=gen, device=images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)


def random_crop(images: torch.Tensor, gen: torch.Generator, *, padding: int = 4) -> torch.Tensor:
    """Pad with zeros by ``padding`` pixels, then crop each image back at a random offset."""
    import torch
    import torch.nn.functional as F

    b, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)  # (B, C, H + 2p, W + 2p)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=images.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=images.device)
    rows = dy[:, None] + torch.arange(h, device=images.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=images.device)  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None]  # (B, 1, 1)
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return cropped.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def _grey(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma of RGB images, ``(B, 3, H, W)`` -> ``(B, 1, H, W)``."""
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def colour_jitter(images: torch.Tensor, gen: torch.Generator, *, strength: float = 0.2) -> torch.Tensor:
    """Scale brightness, contrast and (for RGB) saturation by factors in ``[1 - s, 1 + s]``.

    The same blending formulas as torchvision's ``adjust_brightness``,
    ``adjust_contrast`` and ``adjust_saturation``, with one factor per image.
    """
    b, device = images.shape[0], images.device
    out = images * _uniform(b, 1 - strength, 1 + strength, gen, device).view(-1, 1, 1, 1)
    out = out.clamp_(0, 1)
    grey = _grey(out) if out.shape[1] == 3 else out
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    factor = _uniform(b, 1 - strength, 1 + strength, gen, device).view(-1, 1, 1, 1)
    out = (factor * out + (1 - factor) * mean).clamp_(0, 1)
    if out.shape[1] == 3:
        factor = _uniform(b, 1 - strength, 1 + strength, gen, device).view(-1, 1, 1, 1)
        out = (factor * out + (1 - factor) * _grey(out)).clamp_(0, 1)
    return out


def gaussian_noise(images: torch.Tensor, gen: torch.Generator, *, sigma: float = 0.25) -> torch.Tensor:
    """``images`` plus independent ``N(0, sigma^2)`` noise on every pixel (``sigma`` in pixel units), not clamped:
    the result leaves ``[0, 1]``, as the inputs of a randomized-smoothing base classifier do."""
    import torch

    return images + sigma * torch.randn(images.shape, generator=gen, device=images.device, dtype=images.dtype)


def _flip_crop(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return random_flip(random_crop(images, gen), gen)


def _flip_jitter(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return colour_jitter(random_flip(images, gen), gen)


AUGMENTATIONS: dict[str, Augmentation | None] = {"none": None, "flip-crop": _flip_crop, "flip-jitter": _flip_jitter,
                                                 "seed000": _flip_jitter}  # seed000: flip-jitter's earlier name


#: torchvision's policies: ``{name: {option: default}}``; the option values' types are the defaults'.
POLICIES: dict[str, dict[str, Any]] = {
    "randaugment": {"n": 2, "m": 9},
    "trivialaugment": {},
    "autoaugment": {"policy": "imagenet"},
    "random-erasing": {"p": 0.5},
    "random-resized-crop": {"scale": 0.35},
}
AUTOAUGMENT_POLICIES = ("imagenet", "cifar10", "svhn")
#: Batch parts with options: ``{name: {option: default}}``, run on the whole batch with the generator.
BATCH_PARTS: dict[str, dict[str, Any]] = {"gaussian-noise": {"sigma": 0.25}}


def parse_augment(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``"flip-crop+randaugment:n=2,m=9"`` -> ``[("flip-crop", {}), ("randaugment", {"n": 2, "m": 9})]``,
    every option given a value (its default where unsaid); ``"none"`` -> ``[]``.

    Raises:
        UsageError: An unknown part or option, a value of the wrong type or out of range, a part given twice.
    """
    parts: list[tuple[str, dict[str, Any]]] = []
    for item in text.split("+"):
        name, _, given = item.strip().partition(":")
        name = name.strip()
        if name in AUGMENTATIONS:
            if given:
                raise UsageError(f"augmentation {name!r} takes no options, got {given!r}")
            if AUGMENTATIONS[name] is not None:
                parts.append((name, {}))
            continue
        declared = POLICIES.get(name, BATCH_PARTS.get(name))
        if declared is None:
            raise unknown_choice("augmentation", name, [*AUGMENTATIONS, *POLICIES, *BATCH_PARTS])
        options = dict(declared)
        for pair in filter(None, (p.strip() for p in given.split(","))):
            key, sep, value = pair.partition("=")
            if not sep or key.strip() not in options:
                valid = ", ".join(f"{k}={v}" for k, v in declared.items()) or "none"
                raise UsageError(f"augmentation {name!r}: unknown option {pair!r}; its options: {valid}")
            key, default = key.strip(), declared[key.strip()]
            try:
                options[key] = type(default)(value.strip())
            except ValueError:
                raise UsageError(f"augmentation {name!r}: {key} must be {type(default).__name__}, got "
                                 f"{value.strip()!r}") from None
        _check_policy(name, options)
        parts.append((name, options))
    names = [name for name, _ in parts]
    if len(set(names)) < len(names):
        raise UsageError(f"augmentation {text!r} names a part twice")
    return parts


def _check_policy(name: str, options: dict[str, Any]) -> None:
    ranges = {"n": (1, 10), "m": (0, 30), "p": (0.0, 1.0), "scale": (0.01, 1.0), "sigma": (0.001, 10.0)}
    for key, value in options.items():
        if key in ranges and not ranges[key][0] <= value <= ranges[key][1]:
            raise UsageError(f"augmentation {name!r}: {key} must be in [{ranges[key][0]}, {ranges[key][1]}], "
                             f"got {value}")
    if name == "autoaugment" and options["policy"] not in AUTOAUGMENT_POLICIES:
        raise unknown_choice("autoaugment policy", options["policy"], list(AUTOAUGMENT_POLICIES))


def per_image(text: str) -> list[str]:
    """The parts of an augmentation setting that run image by image (torchvision's policies)."""
    return [name for name, _ in parse_augment(text) if name in POLICIES]


def _policy(name: str, options: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """torchvision's transform for one policy, on one ``uint8`` ``(C, H, W)`` image."""
    from torchvision.transforms import v2

    if name == "randaugment":
        return v2.RandAugment(num_ops=options["n"], magnitude=options["m"])
    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy(options["policy"]))
    if name == "random-erasing":
        return v2.RandomErasing(p=options["p"], value=0)
    return _ResizedCrop(options["scale"])


class _ResizedCrop:
    """``RandomResizedCrop`` back to the image's own size (the size is known only per image)."""

    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import v2

        return v2.RandomResizedCrop(tuple(image.shape[-2:]), scale=(self.scale, 1.0), antialias=True)(image)


def build_augmentation(text: str) -> Augmentation | None:
    """The augmentation a setting names (see the module docstring), or None for ``none``.

    Batch presets run on the whole batch with ``generator``; torchvision's policies run on each image
    as ``uint8`` (as they are defined), with torch's global generator.

    Raises:
        UsageError: See :func:`parse_augment`.
    """
    parts = parse_augment(text)
    if not parts:
        return None
    steps: list[Augmentation] = []
    for name, options in parts:
        if name in AUGMENTATIONS:
            steps.append(AUGMENTATIONS[name])  # type: ignore[arg-type]  # (None was left out by the parser)
        elif name in BATCH_PARTS:
            steps.append(functools.partial(gaussian_noise, sigma=options["sigma"]))
        else:
            steps.append(_ImageByImage(_policy(name, options)))

    def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        for step in steps:
            images = step(images, gen)
        return images

    return augment


class _ImageByImage:
    """A transform of one ``uint8`` image applied to each image of a float ``(B, C, H, W)`` batch in
    ``[0, 1]``; the batch comes back in the same form (its generator is not used: see the module docstring)."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.transform = transform

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        import torch

        as_bytes = images.mul(255).round_().clamp_(0, 255).to(torch.uint8)  # (B, C, H, W)
        return torch.stack([self.transform(image) for image in as_bytes]).float().div_(255)


class AugmentSetting(Constraint):
    """``data.augment``: parts joined by ``+`` (:func:`parse_augment`)."""

    def accepts(self, value: Any) -> bool:
        try:
            parse_augment(value)
        except UsageError:
            return False
        return True

    def describe(self) -> str:
        policies = ", ".join(f"{name}[:{','.join(f'{k}={v}' for k, v in options.items())}]" if options else name
                             for name, options in {**POLICIES, **BATCH_PARTS}.items())
        return f"presets {', '.join(n for n in AUGMENTATIONS if n != 'seed000')} and policies {policies}, joined by +"

    def error(self, where: str, value: Any) -> UsageError:
        try:
            parse_augment(value)
        except UsageError as error:
            return UsageError(f"{where} {value!r}: {error}")
        return super().error(where, value)

    def invalid_values(self) -> list[Any]:
        return ["not-a-preset", "randaugment:n=99", "flip-crop+flip-crop", "gaussian-noise:sigma=0"]
