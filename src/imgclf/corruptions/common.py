"""The fifteen common corruptions of Hendrycks and Dietterich, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations" (ICLR 2019), with the parameters of CIFAR-10-C.

Every function takes a batch ``(N, H, W, C)`` float64 in ``[0, 1]`` (``C`` 1 or 3, any size), a severity
1 to 5 and one NumPy generator per image (each image's random draws come from its own, so an image is
corrupted the same way in any batch), and returns the corrupted batch, same shape (clipped by the caller);
the arithmetic runs on the whole batch where the corruption allows. At
32x32 and below the parameters are those the CIFAR-10-C files were made with (the benchmark's
``make_cifar_c.py``); on larger images every parameter measured in pixels (blur radii, the glass-blur
neighbourhood, the elastic displacement, the frost texture's scale) is multiplied by ``min(H, W) / 32``,
and the others (noise levels, zoom factors, JPEG quality, pixelation ratio, contrast) are kept, so that a
96-pixel photograph is degraded as its 32-pixel version would be. (Radii are not scaled down for smaller
images: a disk of under one pixel's radius blurs nothing, and a 28-pixel MNIST digit is close to CIFAR-10's
size.) Grey images are corrupted as themselves, not
as a colour copy: noise keeps its strength, brightness adds to the grey level, snow's and frost's
layers are taken as luma (ITU-R BT.601 weights).

Where the benchmark's code calls ImageMagick (motion blur) or OpenCV (disk and affine warps), the same
operation is written here with NumPy and SciPy: ImageMagick's motion blur is a one-sided line of
Gaussian weights (width ``2 * ceil(radius) + 1``) along the angle with edge pixels repeated; OpenCV's
borders are "reflect 101" (SciPy's ``mirror``). Two behaviours of the published code that shaped
CIFAR-10-C are kept: glass blur's "swap" of NumPy views copies the neighbour's pixel rather than swapping
(so each pixel takes a random neighbour's value, in raster order from the bottom right), and frost draws
from the first five of its six texture photographs.

The frost textures are the benchmark's photographs as the ``imagecorruptions`` package (Apache 2.0)
distributes them; they are read from its folder without importing it.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from skimage import color as skcolor
from skimage.util import random_noise

from imgclf.corruptions.registry import REFERENCE_SIZE

#: ITU-R BT.601 luma weights (as OpenCV's RGB-to-grey conversion).
LUMA = np.array([0.299, 0.587, 0.114])


Batch = np.ndarray  # (N, H, W, C) float64
Generators = Sequence[np.random.Generator]  # one per image


def _scale(images: Batch) -> float:
    """How much larger than CIFAR-10's 32 pixels the images' shorter side is (1 for 32 pixels or less)."""
    return max(1.0, min(images.shape[1:3]) / REFERENCE_SIZE)


def _grey(images: np.ndarray) -> np.ndarray:
    """``(..., H, W, 1)``: the luma of colour images, grey ones as they are."""
    return images if images.shape[-1] == 1 else (images @ LUMA)[..., None]


def _each(function: Callable[[np.ndarray, np.random.Generator], np.ndarray], images: Batch,
          rngs: Generators) -> Batch:
    """``function(image, rng)`` of each image ``(H, W, C)`` with its generator, stacked."""
    return np.stack([function(image, rng) for image, rng in zip(images, rngs, strict=True)])


def _per_channel(image: np.ndarray, filter_2d) -> np.ndarray:
    return np.stack([filter_2d(image[..., k]) for k in range(image.shape[2])], axis=-1)


def _gaussian(images: Batch, sigma: float, *, mode: str = "nearest", truncate: float = 4.0) -> Batch:
    """A Gaussian blur of each image's channels (scikit-image's ``filters.gaussian`` defaults)."""
    return ndimage.gaussian_filter(images, sigma=(0, sigma, sigma, 0), mode=mode, truncate=truncate)


def _to_pil(image: np.ndarray) -> Image.Image:
    pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(pixels[..., 0], "L") if image.shape[2] == 1 else Image.fromarray(pixels, "RGB")


def _from_pil(picture: Image.Image, channels: int) -> np.ndarray:
    pixels = np.asarray(picture, dtype=np.float64) / 255
    return pixels[..., None] if channels == 1 else pixels


def _clipped_zoom(images: Batch, factor: float) -> Batch:
    """The centre ``1 / factor`` of each image zoomed back to the image's size: bilinear with the corners
    kept (``scipy.ndimage.zoom(order=1)`` per image, computed with PyTorch on the whole batch)."""
    h, w = images.shape[1:3]
    ch, cw = int(np.ceil(h / factor)), int(np.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = torch.from_numpy(np.ascontiguousarray(images[:, top:top + ch, left:left + cw].transpose(0, 3, 1, 2)))
    zoomed = F.interpolate(crop, size=(round(ch * factor), round(cw * factor)), mode="bilinear",
                           align_corners=True).numpy().transpose(0, 2, 3, 1)  # (N, C, H', W') -> (N, H', W', C)
    trim_top, trim_left = (zoomed.shape[1] - h) // 2, (zoomed.shape[2] - w) // 2
    return zoomed[:, trim_top:trim_top + h, trim_left:trim_left + w]


def _motion_blur(images: Batch, radius: float, sigma: float, angles: np.ndarray) -> Batch:
    """ImageMagick's motion blur: a one-sided line of ``2 * ceil(radius) + 1`` Gaussian weights (``sigma``
    pixels) along each image's angle (``(N,)`` degrees), pixels outside the image repeating the edge."""
    width = 2 * math.ceil(radius) + 1
    weights = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2))
    weights /= weights.sum()
    n, h, w = images.shape[:3]
    which, rows, cols = np.arange(n)[:, None, None], np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    radians = np.radians(np.asarray(angles, dtype=np.float64))[:, None, None]  # (N, 1, 1)
    blurred = np.zeros_like(images)
    for i, weight in enumerate(weights):
        dx, dy = np.ceil(i * np.cos(radians) - 0.5).astype(int), np.ceil(i * np.sin(radians) - 0.5).astype(int)
        blurred += weight * images[which, np.clip(rows + dy, 0, h - 1), np.clip(cols + dx, 0, w - 1)]
    return blurred


def _plasma_fractal(size: int, decay: float, rngs: Generators) -> np.ndarray:
    """``(N, size, size)`` diamond-square height maps in ``[0, 1]`` (``size`` a power of two), one per
    generator; the random displacement shrinks by ``decay`` at each halving of the step."""
    heights = np.zeros((len(rngs), size, size))
    step, wibble = size, 100.0

    def displaced(mean_of_four: np.ndarray) -> np.ndarray:  # (N, a, b)
        noise = np.stack([rng.uniform(-wibble, wibble, mean_of_four.shape[1:]) for rng in rngs])
        return mean_of_four / 4 + wibble * noise

    while step >= 2:
        half = step // 2
        corners = heights[:, 0:size:step, 0:size:step]
        square = corners + np.roll(corners, -1, axis=1)
        square += np.roll(square, -1, axis=2)
        heights[:, half:size:step, half:size:step] = displaced(square)  # the centre of each square
        centres = heights[:, half:size:step, half:size:step]
        corners = heights[:, 0:size:step, 0:size:step]
        across = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        heights[:, 0:size:step, half:size:step] = displaced(across)  # the middle of each top edge
        down = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        heights[:, half:size:step, 0:size:step] = displaced(down)  # the middle of each left edge
        step //= 2
        wibble /= decay
    heights -= heights.min(axis=(1, 2), keepdims=True)
    return heights / heights.max(axis=(1, 2), keepdims=True)


# Noise ----------------------------------------------------------------------------------------------------

def gaussian_noise(images: Batch, severity: int, rngs: Generators) -> Batch:
    """Additive Gaussian noise of standard deviation 0.04 to 0.10."""
    sigma = [0.04, 0.06, 0.08, 0.09, 0.10][severity - 1]
    return images + np.stack([rng.normal(scale=sigma, size=images.shape[1:]) for rng in rngs])


def shot_noise(images: Batch, severity: int, rngs: Generators) -> Batch:
    """Poisson (photon) noise: ``Poisson(x * rate) / rate`` with rate 500 down to 50."""
    rate = [500, 250, 100, 75, 50][severity - 1]
    return _each(lambda image, rng: rng.poisson(image * rate), images, rngs) / rate


def impulse_noise(images: Batch, severity: int, rngs: Generators) -> Batch:
    """Salt-and-pepper noise on 1% to 7% of the values (scikit-image's ``random_noise``)."""
    amount = [0.01, 0.02, 0.03, 0.05, 0.07][severity - 1]
    return _each(lambda image, rng: random_noise(image, mode="s&p", amount=amount, rng=rng), images, rngs)


# Blur -----------------------------------------------------------------------------------------------------

def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """A normalised disk of ``radius`` pixels on a grid of at least 17x17, blurred to antialias it."""
    half = max(8, math.ceil(radius))
    grid = np.arange(-half, half + 1)
    x, y = np.meshgrid(grid, grid)
    disk = ((x ** 2 + y ** 2) <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    size = 3 if radius <= 8 else 5  # the Gaussian's taps, as the benchmark's code
    taps = np.arange(size) - (size - 1) / 2
    gauss = np.exp(-taps ** 2 / (2 * alias_blur ** 2))
    gauss /= gauss.sum()
    disk = ndimage.correlate1d(disk, gauss, axis=0, mode="mirror")
    return ndimage.correlate1d(disk, gauss, axis=1, mode="mirror")


def defocus_blur(images: Batch, severity: int, rngs: Generators) -> Batch:
    """A disk (out-of-focus) blur of radius 0.3 to 1.5 pixels at 32x32."""
    radius, alias_blur = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][severity - 1]
    kernel = _disk(radius * _scale(images), alias_blur)
    return ndimage.correlate(images, kernel[None, :, :, None], mode="mirror")  # each image's channels alone


def _take_neighbours(pixels: np.ndarray, targets: tuple[np.ndarray, np.ndarray],
                     sources: tuple[np.ndarray, np.ndarray], *, in_order: bool) -> np.ndarray:
    """``pixels[targets[k]] = pixels[sources[k]]`` for k = 0, 1, ... in turn (``pixels`` ``(H, W, C)``,
    changed in place). Without ``in_order``, one gather: the same result where no source is an earlier
    target, as in glass blur's one-pixel neighbourhoods (each pixel reads one above or left of it, which is
    visited after it)."""
    if not in_order:
        pixels[targets] = pixels[sources]
        return pixels
    h, w, c = pixels.shape
    flat = pixels.reshape(h * w, c)  # (H, W, C) -> (H * W, C), a view
    for target, source in zip((targets[0] * w + targets[1]).tolist(), (sources[0] * w + sources[1]).tolist(),
                              strict=True):
        flat[target] = flat[source]
    return pixels


def glass_blur(images: Batch, severity: int, rngs: Generators) -> Batch:
    """Frosted glass: a Gaussian blur, each pixel replaced by a random neighbour's (once or twice), blurred
    again."""
    sigma, delta, iterations = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][severity - 1]
    scale = _scale(images)
    sigma, delta = sigma * scale, max(1, round(delta * scale))
    h, w = images.shape[1:3]
    pixels = np.floor(_gaussian(images, sigma) * 255 + 1e-6) / 255  # 8-bit, as the benchmark's uint8 arrays
    grid = np.meshgrid(np.arange(h - delta, delta, -1), np.arange(w - delta, delta, -1), indexing="ij")
    ys, xs = grid[0].ravel(), grid[1].ravel()  # the pixels visited, in raster order from the bottom right
    for _ in range(iterations):
        for image, rng in zip(pixels, rngs, strict=True):  # (each a view: changed in place)
            dx, dy = rng.integers(-delta, delta, size=(2, len(ys)))  # each in [-delta, delta)
            sources = np.minimum(ys + dy, h - 1), np.minimum(xs + dx, w - 1)
            _take_neighbours(image, (ys, xs), sources, in_order=delta > 1)
    return _gaussian(pixels, sigma)


def motion_blur(images: Batch, severity: int, rngs: Generators) -> Batch:
    """A camera shake: motion blur of radius 6 to 9 pixels (at 32x32) at a random angle in ``[-45, 45)``
    degrees."""
    radius, sigma = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][severity - 1]
    scale = _scale(images)
    angles = np.array([rng.uniform(-45, 45) for rng in rngs])
    blurred = _motion_blur(images, radius * scale, sigma * scale, angles)
    return np.round(blurred * 255) / 255  # through an 8-bit image, as the benchmark's PNG


def zoom_blur(images: Batch, severity: int, rngs: Generators) -> Batch:
    """The mean of each image and its centre zoomed by 1.00, 1.01, ... up to 1.05 to 1.25."""
    top = [1.06, 1.11, 1.16, 1.21, 1.26][severity - 1]
    factors = np.arange(1, top, 0.01)
    total = images.copy()
    for factor in factors:
        total += _clipped_zoom(images, factor)
    return total / (len(factors) + 1)


# Weather --------------------------------------------------------------------------------------------------

def snow(images: Batch, severity: int, rngs: Generators) -> Batch:
    """Falling snow: a thresholded noise layer, zoomed and motion-blurred, over a whitened image."""
    mean, std, zoom, threshold, radius, sigma, keep = [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)][severity - 1]
    scale = _scale(images)
    layer = np.stack([rng.normal(loc=mean, scale=std, size=(*images.shape[1:3], 1)) for rng in rngs])
    layer = _clipped_zoom(layer, zoom)
    layer[layer < threshold] = 0
    layer = np.round(np.clip(layer, 0, 1) * 255) / 255  # 8-bit grey images, as the benchmark's PNG
    layer = _motion_blur(layer, radius * scale, sigma * scale, np.array([rng.uniform(-135, -45) for rng in rngs]))
    layer = np.round(layer * 255) / 255
    whitened = np.maximum(images, _grey(images) * 1.5 + 0.5)
    return keep * images + (1 - keep) * whitened + layer + np.rot90(layer, k=2, axes=(1, 2))


@functools.lru_cache(maxsize=1)
def _frost_photographs() -> tuple[np.ndarray, ...]:
    """The benchmark's frost textures (``(H, W, 3)`` float in ``[0, 1]``), the first five of six.

    Raises:
        ValueError: If the ``imagecorruptions`` package, which carries them, is not installed.
    """
    spec = importlib.util.find_spec("imagecorruptions")
    folder = Path(next(iter(spec.submodule_search_locations))) / "frost" if spec and \
        spec.submodule_search_locations else None
    names = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"]
    if folder is None or not all((folder / name).is_file() for name in names):
        raise ValueError("the frost corruption needs the benchmark's frost photographs, which the "
                         "'imagecorruptions' package carries: pip install imagecorruptions")
    photographs = []
    for name in names:
        with Image.open(folder / name) as picture:
            photographs.append(np.asarray(picture.convert("RGB"), dtype=np.float64) / 255)
    return tuple(photographs)


@functools.lru_cache(maxsize=32)
def _frost_texture(index: int, factor: float, min_side: int) -> np.ndarray:
    """Frost photograph ``index`` resized by ``factor`` (bilinear, without antialiasing, as OpenCV's
    ``resize``), and by more where that leaves a side under ``min_side``."""
    photograph = _frost_photographs()[index]
    h, w = photograph.shape[:2]
    factor = max(factor, (min_side + 1) / min(h, w))
    planes = torch.from_numpy(photograph.transpose(2, 0, 1).copy())[None]  # (H, W, 3) -> (1, 3, H, W)
    resized = F.interpolate(planes, size=(max(1, int(round(h * factor))), max(1, int(round(w * factor)))),
                            mode="bilinear", align_corners=False, antialias=False)
    return resized[0].numpy().transpose(1, 2, 0)  # (3, H', W') -> (H', W', 3)


def frost(images: Batch, severity: int, rngs: Generators) -> Batch:
    """Ice on the lens: the image dimmed and a random crop of a frost photograph added."""
    keep, add = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][severity - 1]
    h, w = images.shape[1:3]

    def crop(rng: np.random.Generator) -> np.ndarray:
        texture = _frost_texture(int(rng.integers(5)), 0.2 * _scale(images), max(h, w))
        top, left = rng.integers(0, texture.shape[0] - h), rng.integers(0, texture.shape[1] - w)
        return texture[top:top + h, left:left + w]

    crops = np.stack([crop(rng) for rng in rngs])  # (N, H, W, 3)
    return keep * images + add * (_grey(crops) if images.shape[3] == 1 else crops)


def fog(images: Batch, severity: int, rngs: Generators) -> Batch:
    """Fog: a plasma-fractal haze added and the contrast lowered."""
    strength, decay = [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][severity - 1]
    h, w = images.shape[1:3]
    size = 1 << (max(h, w) - 1).bit_length()  # the smallest power of two >= the longer side
    peak = images.max(axis=(1, 2, 3), keepdims=True)  # (N, 1, 1, 1): each image's brightest value
    hazy = images + strength * _plasma_fractal(size, decay, rngs)[:, :h, :w, None]
    return hazy * peak / (peak + strength)


def brightness(images: Batch, severity: int, rngs: Generators) -> Batch:
    """Brighter: 0.05 to 0.3 added to the value channel in HSV (to the grey level of a grey image)."""
    shift = [0.05, 0.1, 0.15, 0.2, 0.3][severity - 1]
    if images.shape[3] == 1:
        return images + shift
    hsv = skcolor.rgb2hsv(images)
    hsv[..., 2] = np.clip(hsv[..., 2] + shift, 0, 1)
    return skcolor.hsv2rgb(hsv)


# Digital --------------------------------------------------------------------------------------------------

def contrast(images: Batch, severity: int, rngs: Generators) -> Batch:
    """Lower contrast: each channel's distance from its mean times 0.75 down to 0.15."""
    factor = [0.75, 0.5, 0.4, 0.3, 0.15][severity - 1]
    means = images.mean(axis=(1, 2), keepdims=True)  # (N, 1, 1, C)
    return (images - means) * factor + means


def _affine_warp(image: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The image warped by the affine map taking the three ``source`` points to ``target`` (``(3, 2)``
    ``(x, y)`` each), bilinear, borders reflected without repeating the edge (OpenCV's ``warpAffine``)."""
    solved = np.linalg.solve(np.hstack([source, np.ones((3, 1))]), target)  # (3, 2): [x y 1] @ solved
    forward, shift = solved[:2].T, solved[2]  # target = forward @ source + shift, in (x, y)
    inverse = np.linalg.inv(forward)
    swap = np.array([[0, 1], [1, 0]])  # (x, y) <-> (row, column)
    matrix, offset = swap @ inverse @ swap, -(swap @ inverse @ shift)
    return _per_channel(image, lambda plane: ndimage.affine_transform(plane, matrix, offset, order=1, mode="mirror"))


def elastic(images: Batch, severity: int, rngs: Generators) -> Batch:
    """An elastic deformation: a small random affine warp, then a smooth random displacement field."""
    return _each(lambda image, rng: _elastic(image, severity, rng), images, rngs)


def _elastic(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    side = REFERENCE_SIZE * _scale(image[None])  # 32 up to CIFAR-10's size
    alpha, sigma, affine = [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                            (0.1, 0.03, 0.03)][severity - 1]
    alpha, sigma, affine = alpha * side, sigma * side, affine * side
    h, w = image.shape[:2]
    centre, reach = np.array([w // 2, h // 2], dtype=np.float64), side // 3  # (x, y)
    source = np.array([centre + reach, [centre[0] + reach, centre[1] - reach], centre - reach])
    target = source + rng.uniform(-affine, affine, size=source.shape)
    warped = _affine_warp(image, source, target)
    dx, dy = (ndimage.gaussian_filter(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha
              for _ in range(2))
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coordinates = np.array([rows + dy, cols + dx])  # (2, H, W): where each output pixel reads from
    return _per_channel(warped, lambda plane: ndimage.map_coordinates(plane, coordinates, order=1, mode="reflect"))


def pixelate(images: Batch, severity: int, rngs: Generators) -> Batch:
    """Box-downsampled to 0.95 down to 0.65 of the size and box-upsampled back."""
    ratio = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]
    h, w, c = images.shape[1:]

    def one(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        small = _to_pil(image).resize((int(w * ratio), int(h * ratio)), Image.Resampling.BOX)
        return _from_pil(small.resize((w, h), Image.Resampling.BOX), c)

    return _each(one, images, rngs)


def jpeg(images: Batch, severity: int, rngs: Generators) -> Batch:
    """JPEG compression (Pillow) at quality 80 down to 40."""
    quality = [80, 65, 58, 50, 40][severity - 1]
    channels = images.shape[3]

    def one(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        buffer = io.BytesIO()
        _to_pil(image).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as compressed:
            return _from_pil(compressed.convert("L" if channels == 1 else "RGB"), channels)

    return _each(one, images, rngs)
