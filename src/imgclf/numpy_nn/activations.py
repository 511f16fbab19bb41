"""Activation functions and their derivatives, written out in NumPy.

Each :class:`Activation` pairs a function with its analytic derivative; the
NumPy MLP (:mod:`imgclf.numpy_nn.numpy_mlp`) uses the same pairs for its
backward pass, and the tests check every derivative against torch autograd.
:func:`properties` measures each function's range behaviour, monotonicity,
smoothness, zero-centring and saturation on a grid, and
:func:`activation_figure` plots function and derivative side by side.

Sources: ReLU (Nair and Hinton 2010); leaky ReLU (Maas et al. 2013); ELU
(Clevert et al. 2016); SELU (Klambauer et al. 2017); GELU (Hendrycks and
Gimpel 2016, the exact erf form); SiLU/Swish (Elfwing et al. 2018; Ramachandran
et al. 2017); Mish (Misra 2019); softplus (Dugas et al. 2001).

At a kink (ReLU and leaky ReLU at 0, ELU at 0 when alpha != 1) the derivative
follows PyTorch's convention: the left-hand value (``0`` for ReLU, the negative
slope for leaky ReLU, ``alpha`` for ELU).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from scipy.special import erf, expit

from imgclf.errors import unknown_choice

#: SELU's constants (Klambauer et al. 2017, eq. 14).
SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805

Array = np.ndarray


def _softplus(x: Array) -> Array:
    return np.logaddexp(0.0, x)  # log(1 + e^x) without overflow


@dataclass(frozen=True)
class Activation:
    """One activation function and its derivative, elementwise on arrays of any shape.

    Attributes:
        name: Registry name (``"elu"``, ...).
        function: ``f(x)``; same shape and dtype as ``x``.
        derivative: ``f'(x)``; same shape and dtype as ``x``.
        source: The paper that introduced it.
        lower, upper: The range's bounds (``-inf``/``inf`` where unbounded),
            derived by hand; the tests check them on a grid.
        lower_attained: The lower bound is a value of ``f`` (ReLU's 0, GELU's
            minimum) rather than only approached as ``x -> -inf``.
    """

    name: str
    function: Callable[[Array], Array]
    derivative: Callable[[Array], Array]
    source: str
    lower: float = -math.inf
    upper: float = math.inf
    lower_attained: bool = False

    def __call__(self, x: Array) -> Array:
        return self.function(x)


def relu() -> Activation:
    """``max(0, x)``; derivative 1 for ``x > 0``, else 0."""
    return Activation("relu", lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(x.dtype),
                      "Nair & Hinton 2010", lower=0.0, lower_attained=True)


def leaky_relu(negative_slope: float = 0.01) -> Activation:
    """``x`` for ``x > 0``, else ``negative_slope * x``."""
    return Activation(
        "leaky-relu", lambda x: np.where(x > 0, x, negative_slope * x),
        lambda x: np.where(x > 0, 1.0, negative_slope).astype(x.dtype), "Maas et al. 2013")


def elu(alpha: float = 1.0) -> Activation:
    """``x`` for ``x > 0``, else ``alpha * (e^x - 1)``; derivative 1, else ``alpha * e^x``.

    The derivative is continuous at 0 only when ``alpha == 1``.
    """
    def function(x: Array) -> Array:
        return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))

    def derivative(x: Array) -> Array:
        return np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0))).astype(x.dtype)

    return Activation("elu", function, derivative, "Clevert, Unterthiner & Hochreiter 2016", lower=-alpha)


def selu() -> Activation:
    """``scale * elu(x, alpha)`` with the self-normalising constants :data:`SELU_SCALE`, :data:`SELU_ALPHA`."""
    inner = elu(SELU_ALPHA)
    return Activation("selu", lambda x: (SELU_SCALE * inner.function(x)).astype(x.dtype),
                      lambda x: (SELU_SCALE * inner.derivative(x)).astype(x.dtype), "Klambauer et al. 2017",
                      lower=-SELU_SCALE * SELU_ALPHA)


def gelu() -> Activation:
    """``x * Phi(x)`` with ``Phi`` the standard normal CDF (exact erf form);
    derivative ``Phi(x) + x * phi(x)``."""
    def cdf(x: Array) -> Array:
        return 0.5 * (1.0 + erf(x / math.sqrt(2.0)))

    def derivative(x: Array) -> Array:
        return (cdf(x) + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)).astype(x.dtype)

    # minimum where Phi(x) + x phi(x) = 0, at x = -0.7518
    return Activation("gelu", lambda x: (x * cdf(x)).astype(x.dtype), derivative, "Hendrycks & Gimpel 2016",
                      lower=-0.16997120747990366, lower_attained=True)


def silu() -> Activation:
    """SiLU / Swish-1: ``x * sigmoid(x)``; derivative ``s + x * s * (1 - s)``."""
    def derivative(x: Array) -> Array:
        s = expit(x)
        return (s * (1.0 + x * (1.0 - s))).astype(x.dtype)

    return Activation("silu", lambda x: (x * expit(x)).astype(x.dtype), derivative,
                      "Elfwing et al. 2018; Ramachandran et al. 2017 (Swish)",
                      lower=-0.27846454276107385, lower_attained=True)  # at x = -1.27846


def mish() -> Activation:
    """``x * tanh(softplus(x))``; derivative ``tanh(sp) + x * sigmoid(x) * (1 - tanh(sp)^2)``."""
    def derivative(x: Array) -> Array:
        t = np.tanh(_softplus(x))
        return (t + x * expit(x) * (1.0 - t * t)).astype(x.dtype)

    return Activation("mish", lambda x: (x * np.tanh(_softplus(x))).astype(x.dtype), derivative, "Misra 2019",
                      lower=-0.30884341301725043, lower_attained=True)  # at x = -1.19243


def softplus() -> Activation:
    """``log(1 + e^x)``; derivative ``sigmoid(x)``."""
    return Activation("softplus", lambda x: _softplus(x).astype(x.dtype), lambda x: expit(x).astype(x.dtype),
                      "Dugas et al. 2001", lower=0.0)


def sigmoid() -> Activation:
    """``1 / (1 + e^-x)``; derivative ``s * (1 - s)``."""
    def derivative(x: Array) -> Array:
        s = expit(x)
        return (s * (1.0 - s)).astype(x.dtype)

    return Activation("sigmoid", lambda x: expit(x).astype(x.dtype), derivative, "logistic function",
                      lower=0.0, upper=1.0)


def tanh() -> Activation:
    """``tanh(x)``; derivative ``1 - tanh(x)^2``."""
    return Activation("tanh", np.tanh, lambda x: (1.0 - np.tanh(x) ** 2).astype(x.dtype), "hyperbolic tangent",
                      lower=-1.0, upper=1.0)


#: Every activation by name; each builder takes its hyperparameters as keywords.
ACTIVATIONS: dict[str, Callable[..., Activation]] = {
    "relu": relu, "leaky-relu": leaky_relu, "elu": elu, "selu": selu, "gelu": gelu, "silu": silu,
    "mish": mish, "softplus": softplus, "sigmoid": sigmoid, "tanh": tanh,
}
#: ``swish`` is SiLU (Swish with beta = 1).
ALIASES = {"swish": "silu", "leaky_relu": "leaky-relu"}


def get_activation(name: str, *, alpha: float = 1.0, negative_slope: float = 0.01) -> Activation:
    """The activation called ``name`` (or an alias such as ``swish``).

    Args:
        name: One of :data:`ACTIVATIONS` or :data:`ALIASES`.
        alpha: ELU's alpha (ignored by the others).
        negative_slope: Leaky ReLU's slope for ``x <= 0`` (ignored by the others).

    Raises:
        UsageError: On an unknown name, listing the valid ones.
    """
    key = ALIASES.get(name.lower(), name.lower())
    if key not in ACTIVATIONS:
        raise unknown_choice("activation", name, [*ACTIVATIONS, *ALIASES])
    if key == "elu":
        return elu(alpha)
    if key == "leaky-relu":
        return leaky_relu(negative_slope)
    return ACTIVATIONS[key]()


@dataclass(frozen=True)
class Properties:
    """What :func:`properties` found of one activation.

    Attributes:
        name: The activation.
        range: Interval notation from the declared bounds, e.g. ``(-1, 1)`` or ``[-0.2785, inf)``.
        monotonic: ``f'(x) >= 0`` at every point of the grid.
        smooth: The derivative is continuous (no jump at 0, where every kink here is).
        zero_centred: ``f(0) = 0`` and ``f`` takes negative values, so outputs
            can average to about 0.
        saturating: ``"both"``, ``"left"``, ``"right"`` or ``"none"``: on which
            side ``f'(x) -> 0`` (below 1e-6 at ``x = -50`` / ``50``).
        derivative_at_0: ``f'(0)`` (at a kink, PyTorch's convention).
    """

    name: str
    range: str
    monotonic: bool
    smooth: bool
    zero_centred: bool
    saturating: str
    derivative_at_0: float

    def row(self) -> dict[str, str]:
        """The table row :func:`properties_table` prints."""
        yes = {True: "yes", False: "no"}
        return {"activation": self.name, "range": self.range, "monotonic": yes[self.monotonic],
                "smooth": yes[self.smooth], "zero-centred": yes[self.zero_centred],
                "saturating": self.saturating, "f'(0)": f"{self.derivative_at_0:.4g}"}


#: The float64 grid the properties are measured on: ``[-50, 50]`` in steps of 5e-4, 0 included.
GRID = np.linspace(-50.0, 50.0, 200_001)


def properties(activation: Activation) -> Properties:
    """Measure an activation's monotonicity, smoothness, zero-centring, saturation
    and derivative at 0 on :data:`GRID`; the range comes from its declared bounds.
    """
    y, dy = activation.function(GRID), activation.derivative(GRID)
    tol = 1e-6
    left, zero, right = activation.derivative(np.array([-1e-9, 0.0, 1e-9]))
    low = "(-inf" if math.isinf(activation.lower) else ("[" if activation.lower_attained else "(") + \
        f"{activation.lower:.4g}"
    high = "inf)" if math.isinf(activation.upper) else f"{activation.upper:.4g})"
    saturation = {(True, True): "both", (True, False): "left", (False, True): "right", (False, False): "none"}
    return Properties(
        name=activation.name, range=f"{low}, {high}",
        monotonic=bool((dy >= -1e-12).all()), smooth=bool(abs(left - right) < tol),
        zero_centred=bool(abs(activation.function(np.zeros(1))[0]) < 1e-12 and y.min() < -tol),
        saturating=saturation[(bool(abs(dy[0]) < tol), bool(abs(dy[-1]) < tol))],
        derivative_at_0=float(zero),
    )


def properties_table(rows: Sequence[Properties]) -> str:
    """The properties as a Markdown table (what ``imgclf activations`` prints and saves)."""
    cells = [row.row() for row in rows]
    header = list(cells[0])
    widths = {key: max(len(key), *(len(c[key]) for c in cells)) for key in header}

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(widths[k]) for k, v in zip(header, values, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (widths[k] + 2) for k in header) + "|",
                      *(line([c[k] for k in header]) for c in cells)])


def activation_figure(activations: Sequence[Activation], *, low: float = -5.0, high: float = 5.0) -> Figure:
    """One panel per activation: ``f(x)`` and ``f'(x)`` over ``[low, high]``.

    Returns:
        The figure (never shown); save it with :func:`imgclf.report.plots.save_figure`.
    """
    columns = min(4, len(activations))
    rows = math.ceil(len(activations) / columns)
    figure = Figure(figsize=(3.2 * columns, 2.6 * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    x = np.linspace(low, high, 1001)
    for ax, activation in zip(axes[:len(activations)], activations, strict=True):
        ax.axhline(0, color="0.75", linewidth=0.8)
        ax.axvline(0, color="0.75", linewidth=0.8)
        ax.plot(x, activation.function(x), label="f(x)", linewidth=2)
        ax.plot(x, activation.derivative(x), "--", label="f'(x)", linewidth=1.6)
        ax.set_title(activation.name)
        ax.set_xlabel("x")
        ax.grid(alpha=0.3)
    for ax in axes[len(activations):]:
        ax.set_visible(False)
    axes[0].legend(loc="upper left")
    return figure
