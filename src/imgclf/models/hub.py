"""Pretrained weights from a hub (timm's Hugging Face hub, torchvision's download server), checked offline first.

This module imports no torch: the command line calls :func:`check_pretrained` before anything heavy loads.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from imgclf.errors import UsageError

if TYPE_CHECKING:
    from imgclf.models.source import ModelSource

#: Seconds a hub server gets to answer before imgclf says it cannot be reached.
HUB_TIMEOUT = 1.5


def check_pretrained(source: ModelSource) -> None:
    """For a model with ``pretrained=true`` (``source``: what ``--model`` names), fail at once, in one line,
    when the library's weights are neither cached nor downloadable (huggingface_hub would otherwise retry for
    about a minute). It imports no torch, so the command line calls it before anything heavy is loaded; the
    builders call it again.

    ``IMGCLF_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1`` for timm) says there is no network: no connection is tried.

    Raises:
        UsageError: Naming the model and saying how to pass a local weights file instead.
    """
    if source.kind in ("timm", "torchvision"):
        require_hub(source.kind, source.target)


def require_hub(library: str, model_name: str) -> None:
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    offline = os.environ.get("IMGCLF_OFFLINE", "") not in ("", "0")
    if library == "timm":
        hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", home / "huggingface")) / "hub")
        cached = any(hub.glob(f"models--timm--{model_name}*"))
        offline = offline or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        url = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    else:
        checkpoints = Path(os.environ.get("TORCH_HOME", home / "torch")) / "hub" / "checkpoints"
        cached = any(checkpoints.glob(f"{model_name}-*.pth"))
        url = "https://download.pytorch.org"
    if not cached and (offline or not _reachable(url)):
        raise hub_error(library, model_name, "the hub cannot be reached and the weights are not cached")


def _reachable(url: str) -> bool:
    """Whether a TCP connection to ``url``'s host opens within :data:`HUB_TIMEOUT` seconds."""
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    began = time.monotonic()
    try:
        socket.setdefaulttimeout(HUB_TIMEOUT)
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=HUB_TIMEOUT):
            return time.monotonic() - began < HUB_TIMEOUT
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(None)


def hub_error(library: str, model_name: str, why: str) -> UsageError:
    return UsageError(f"the pretrained weights of {library} model {model_name!r} cannot be had ({why}); download "
                      f"them where there is a network and pass the file: --model {library}:{model_name} "
                      "--weights FILE (.safetensors or a state dict .pth)")
