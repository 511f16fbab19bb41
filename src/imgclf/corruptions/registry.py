"""The corruption registry: every common corruption, its group, and where its function lives.

A corruption is a function of a batch of images, ``(N, H, W, C)`` float64 in ``[0, 1]`` with ``C`` 1 (grey)
or 3 (colour), a severity from 1 to 5 and one NumPy random generator per image (each image's draws from its
own), returning images of the same shape (values outside ``[0, 1]`` are clipped afterwards);
:func:`imgclf.corruptions.corrupt` applies one, seeding the generators. Each is declared below with its
function as ``"module:name"``, imported on first use, so that everything that lists or checks corruptions
(the CLI's choices, the configuration's validation, the report, the tests that loop over every corruption)
reads :data:`CORRUPTIONS` without importing torch or SciPy. A corruption of one's own is added with
:func:`register_corruption`.

This module imports no torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imgclf.constraints import Constraint

if TYPE_CHECKING:
    import numpy as np

#: The severities of the benchmark (Hendrycks and Dietterich 2019): 1 (mild) to 5 (severe).
SEVERITIES = (1, 2, 3, 4, 5)
#: The image side the published parameters were set for (CIFAR-10-C); on larger images spatial parameters
#: scale with ``min(H, W) / REFERENCE_SIZE``.
REFERENCE_SIZE = 32
#: The benchmark's groups of corruptions.
GROUPS = ("noise", "blur", "weather", "digital")

CorruptionFunction = Callable[["np.ndarray", int, "Sequence[np.random.Generator]"], "np.ndarray"]


@dataclass(frozen=True)
class CorruptionSpec:
    """A registered corruption.

    Attributes:
        name: The name on the command line and in ``metrics.json`` (``gaussian-noise``).
        title: The name in figures and tables (``Gaussian noise``).
        group: One of :data:`GROUPS`, as the benchmark groups them.
        function: ``"module:name"`` of ``(images, severity, rngs) -> images``, or the function itself.
    """

    name: str
    title: str
    group: str
    function: str | CorruptionFunction

    def load(self) -> CorruptionFunction:
        """The corruption's function (imported on first use)."""
        if callable(self.function):
            return self.function
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)


#: Every registered corruption by name, in the benchmark's order.
CORRUPTIONS: dict[str, CorruptionSpec] = {}


def register_corruption(name: str, *, title: str, group: str, function: str | CorruptionFunction) -> CorruptionSpec:
    """Add corruption ``name``.

    Args:
        function: ``"module:name"`` of the function (imported on first use), or the function.

    Raises:
        ValueError: If ``name`` is taken or ``group`` is not one of :data:`GROUPS`.
    """
    if group not in GROUPS:
        raise ValueError(f"corruption group must be one of {', '.join(GROUPS)}, got {group!r}")
    if name in CORRUPTIONS or name in GROUPS or name == "all":
        raise ValueError(f"corruption name {name!r} is taken")
    CORRUPTIONS[name] = spec = CorruptionSpec(name, title, group, function)
    return spec


def unregister_corruption(name: str) -> None:
    """Remove corruption ``name`` (a test's own, for example).

    Raises:
        KeyError: If it is not registered.
    """
    del CORRUPTIONS[name]


for _name, _title, _group, _function in [
    ("gaussian-noise", "Gaussian noise", "noise", "gaussian_noise"),
    ("shot-noise", "Shot noise", "noise", "shot_noise"),
    ("impulse-noise", "Impulse noise", "noise", "impulse_noise"),
    ("defocus-blur", "Defocus blur", "blur", "defocus_blur"),
    ("glass-blur", "Glass blur", "blur", "glass_blur"),
    ("motion-blur", "Motion blur", "blur", "motion_blur"),
    ("zoom-blur", "Zoom blur", "blur", "zoom_blur"),
    ("snow", "Snow", "weather", "snow"),
    ("frost", "Frost", "weather", "frost"),
    ("fog", "Fog", "weather", "fog"),
    ("brightness", "Brightness", "weather", "brightness"),
    ("contrast", "Contrast", "digital", "contrast"),
    ("elastic", "Elastic", "digital", "elastic"),
    ("pixelate", "Pixelate", "digital", "pixelate"),
    ("jpeg", "JPEG", "digital", "jpeg"),
]:
    register_corruption(_name, title=_title, group=_group, function=f"imgclf.corruptions.common:{_function}")


def corruption_names() -> tuple[str, ...]:
    """The registered corruptions' names, in the benchmark's order."""
    return tuple(CORRUPTIONS)


def corruption_choices() -> tuple[str, ...]:
    """What ``--corruptions`` accepts: ``all``, the groups, and every name."""
    return ("all", *GROUPS, *CORRUPTIONS)


def parse_corruptions(names: str | Sequence[str]) -> tuple[str, ...]:
    """Corruption names from ``"all"``, a group (``noise``, ``blur``, ``weather``, ``digital``) or
    names, comma-separated or as a list, in the benchmark's order.

    Raises:
        ValueError: On an unknown name, listing the valid ones.
    """
    asked = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    chosen: set[str] = set()
    for name in asked or ["(none)"]:
        if name == "all":
            chosen.update(CORRUPTIONS)
        elif name in GROUPS:
            chosen.update(spec.name for spec in CORRUPTIONS.values() if spec.group == name)
        elif name in CORRUPTIONS:
            chosen.add(name)
        else:
            raise ValueError(f"unknown corruption {name!r}; choose all, a group ({', '.join(GROUPS)}) or names "
                             f"from {', '.join(CORRUPTIONS)}")
    return tuple(n for n in CORRUPTIONS if n in chosen)


def parse_severities(text: str | Sequence[int]) -> tuple[int, ...]:
    """Severities from ``"1:5"``, ``"3"``, ``"1,3,5"`` or a list of integers, ascending without repeats.

    Raises:
        ValueError: On anything but integers 1 to 5.
    """
    values: list[int] = []
    if isinstance(text, str):
        try:
            for piece in text.replace(" ", "").split(","):
                low, sep, high = piece.partition(":")
                values.extend(range(int(low), int(high) + 1) if sep else [int(low)])
        except ValueError:
            values = []
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in text):
        values = list(text)
    if not values or any(v not in SEVERITIES for v in values):
        raise ValueError(f"severities must be integers from 1 to 5, as 1:5, 3 or 1,3,5; got {text!r}")
    return tuple(sorted(set(values)))


class SeveritySetting(Constraint):
    """``corruption.severities``: as written (``"1:5"``, ``"3"``, ``"1,3,5"``) or a list of integers, each 1
    to 5 (:func:`parse_severities`, which :func:`imgclf.settings.resolve` applies once)."""

    def accepts(self, value: Any) -> bool:
        try:
            parse_severities(value)
        except (ValueError, TypeError):
            return False
        return True

    def describe(self) -> str:
        return "integers from 1 to 5, as 1:5, 3 or 1,3,5 (or a list)"

    def invalid_values(self) -> list[Any]:
        return ["0:9", "x", [0, 6]]


#: ``--corruption-stage auto`` runs the stage on images at least this many pixels on a side (below it the
#: blurs, frost and JPEG compression have too little to act on) ...
AUTO_MIN_SIDE = 16
#: ... that corrupt at most this many values (images x corruptions x severities x channels x height x width):
#: the default 100 test images under all 75 corruptions and severities up to 64x64 colour (92 million).
AUTO_MAX_VALUES = 100_000_000


def auto_skips(*, images: int, shape: Sequence[int], corruptions: int, severities: int) -> str | None:
    """Why ``--corruption-stage auto`` leaves the stage out of ``imgclf run``, in words, or None where it runs
    it: a rule on the work alone (:data:`AUTO_MIN_SIDE`, :data:`AUTO_MAX_VALUES`), so the same command on the
    same data always runs the same stages, however busy the machine.

    Args:
        images: Test images the stage would corrupt.
        shape: ``(C, H, W)`` of each image, in pixels.
        corruptions, severities: How many of each.
    """
    channels, height, width = shape
    if min(height, width) < AUTO_MIN_SIDE:
        return f"the images are {height}x{width}, under the {AUTO_MIN_SIDE}x{AUTO_MIN_SIDE} auto runs it on"
    values = images * corruptions * severities * channels * height * width
    if values > AUTO_MAX_VALUES:
        return (f"{images} images x {corruptions * severities} corruptions and severities at {channels}x{height}x"
                f"{width} are {values / 1e6:,.0f} million values, over the {AUTO_MAX_VALUES / 1e6:,.0f} million auto "
                "runs")
    return None
