"""Shared fixtures. Real-data tests read ../shared/data (or $IMGCLF_DATA_DIR) and
are skipped, with the reason shown, where that folder is absent."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("IMGCLF_DATA_DIR") or ROOT.parent / "shared" / "data").resolve()
needs_gloo = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch build has no gloo backend")


def shared_data(*parts: str) -> Path:
    """Path under the shared test data; skips the test if it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (set IMGCLF_DATA_DIR)")
    return path


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Decoded-image cache in a temporary folder, never the user's."""
    patch = pytest.MonkeyPatch()
    patch.setenv("IMGCLF_CACHE_DIR", str(tmp_path_factory.mktemp("decoded-cache")))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _quiet_torch():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture(autouse=True)
def _no_trust_carried_over():
    """What one test trusted (:mod:`imgclf.trust`) is forgotten before the next: each is a new process's view."""
    from imgclf.trust import forget_trust

    yield
    forget_trust()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real run folder (digits, an MLP, 2 epochs, FGSM on 20 images) that a module's tests copy."""
    from imgclf.cli import main

    out = tmp_path_factory.mktemp("edges") / "run"
    assert main(["run", "--model", "mlp", "--epochs", "2", "--attack", "fgsm", "--eps", "0,0.1", "--n-examples", "20",
                 "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture
def copy(run_dir, tmp_path) -> Path:
    """A copy of :func:`run_dir` that a test may damage."""
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """An image folder with 3 classes of 12 PNG/JPEG images each, plus clutter."""
    return make_tiny_folder(tmp_path)


def make_tiny_folder(parent: Path) -> Path:
    """See :func:`tiny_folder`; the class is the dominant colour channel."""
    rng = np.random.default_rng(0)
    root = parent / "shapes"
    for k, name in enumerate(["circle", "square", "stripe"]):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(12):
            array = rng.integers(0, 60, size=(20, 24, 3), dtype=np.uint8)
            array[:, :, k] += 150  # the class is the dominant colour channel
            suffix = ".png" if i % 2 else ".jpg"
            Image.fromarray(array).save(folder / f"{i}{suffix}")
        (folder / "notes.txt").write_text("not an image")
        (folder / ".DS_Store").write_bytes(b"\x00\x01")
    (root / ".ipynb_checkpoints").mkdir()
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "junk.png").write_bytes(b"junk")
    (root / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def newest_evaluation(run: Path) -> dict:
    """The newest robustness evaluation in ``run``'s ``metrics.json``, as stored (``robustness``, ``attack``,
    ``key``, ``settings``)."""
    import json

    return json.loads((run / "metrics.json").read_text())["evaluations"][-1]


class Rounding(torch.nn.Module):
    """Gradient masking by quantizing the input: accurate, but every input gradient is 0."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)
