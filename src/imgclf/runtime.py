"""The machine a run executes on: device choice, seeding, and version facts."""

from __future__ import annotations

import importlib.util
import os
import platform
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from imgclf.errors import UsageError

if TYPE_CHECKING:
    from tqdm import tqdm


def select_device(name: str = "auto") -> torch.device:
    """Resolve ``"auto" | "cpu" | "cuda"`` to a :class:`torch.device`.

    ``auto`` picks CUDA when a GPU is visible, else the CPU.

    Raises:
        UsageError: If ``cuda`` is asked for on a machine without a usable GPU.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators with ``seed``.

    imgclf itself draws data order, splits and attack random starts from
    explicit generators derived from the same seed; this call covers weight
    initialisation and any third-party code that uses the global generators.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh :class:`torch.Generator` on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


@contextmanager
def channels_last(model: torch.nn.Module) -> Iterator[bool]:
    """Store ``model``'s 4-D weights and buffers in the channels-last (NHWC) memory format while the block runs.

    Convolutions and pooling on the CPU (oneDNN) and on CUDA (cuDNN) run faster on NHWC tensors: for a small
    MNIST CNN on two CPU cores a forward pass takes a quarter of the NCHW time, a forward and backward pass
    two thirds. Only the layout changes, never a value; the block ends with every tensor restored to the
    layout it had, so the caller's model is left as it was. Models with no 4-D tensor (an MLP, an ONNX
    session that holds its weights outside PyTorch) are left alone.

    Yields:
        True when some tensor was converted.
    """
    tensors = [t for t in chain(model.parameters(), model.buffers()) if t.dim() == 4 and t.is_floating_point()]
    saved = [t.data for t in tensors]
    for tensor in tensors:
        tensor.data = tensor.data.to(memory_format=torch.channels_last)  # restrides even where C or H*W is 1
    try:
        yield bool(tensors)
    finally:
        for tensor, data in zip(tensors, saved, strict=True):
            tensor.data = data


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware facts recorded with every result."""
    import sklearn
    import torchvision

    from imgclf import __version__

    info: dict[str, Any] = {
        "imgclf": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "scikit_learn": sklearn.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython's ZMQ shell), where the output is a notebook cell."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def progress(*, quiet: bool = False, **options: Any) -> tqdm:
    """A progress bar for long work: a widget in a Jupyter notebook (text where ``ipywidgets`` is not installed),
    on a terminal tqdm's bar, and nothing where the output is neither (a CI log, a file) or ``quiet`` is set.

    Args:
        quiet: Show nothing.
        options: tqdm's keyword arguments (``total``, ``desc``, ``unit``, ``leave``...).

    Returns:
        The bar (a context manager; ``update(n)``, ``set_description``, ``total`` as tqdm's).
    """
    from tqdm import tqdm

    if quiet:
        return tqdm(disable=True, **options)
    if in_notebook():
        if importlib.util.find_spec("ipywidgets") is not None:
            from tqdm.notebook import tqdm as notebook_bar

            return notebook_bar(**options)
        return tqdm(disable=False, file=sys.stdout, **options)  # carriage returns redraw it in the cell
    return tqdm(disable=None, dynamic_ncols=True, **options)  # None: only on a terminal


@contextmanager
def progress_callback(*, quiet: bool = False, **options: Any) -> Iterator[Callable[[int, int], None]]:
    """A :func:`progress` bar and the ``advance(done, total)`` callback that moves it (work whose total is known
    only as it goes, such as an evaluation's units); the bar is closed when the block ends."""
    with progress(quiet=quiet, **options) as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield advance
