"""Benchmark: what the memory layout and the examples per model call cost an attack on the CPU.

An attack calls the model hundreds of times per batch, for logits (forward) and input gradients (forward
and backward). This prints the time per example of both, for a run's model on 512 random images, in the
default layout and in channels-last (which :func:`imgclf.attacks.robustness` uses), called on all 512 at
once and in chunks (the evaluation calls the model on at most
:data:`imgclf.attacks.core.CPU_CHUNK` examples at a time on the CPU).

Usage::

    python bench/model_call_size.py runs/mnist
    python bench/model_call_size.py runs/cifar --repeats 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch


def per_example(call, images: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Microseconds per example of a forward pass, and of a forward and backward pass (input gradient)."""
    from imgclf.attacks.core import logits_and_gradient

    def loss(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 0]

    with torch.no_grad():
        call(images)
        began = time.perf_counter()
        for _ in range(repeats):
            call(images)
        forward = (time.perf_counter() - began) / repeats
    logits_and_gradient(call, images, loss)
    began = time.perf_counter()
    for _ in range(repeats):
        logits_and_gradient(call, images, loss)
    both = (time.perf_counter() - began) / repeats
    return forward / len(images) * 1e6, both / len(images) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a run folder")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunks", default="512,256,128,64,32")
    args = parser.parse_args()

    from imgclf import load_model
    from imgclf.attacks.core import Chunked
    from imgclf.runtime import channels_last

    model = load_model(args.run).eval()
    shape = json.loads((args.run / "model.json").read_text())["input_shape"]
    images = torch.rand(512, *shape)
    print(f"{args.run}: 512 images of {'x'.join(map(str, shape))}, {torch.get_num_threads()} threads; "
          "microseconds per example", flush=True)
    for layout in ("default", "channels-last"):
        with channels_last(model) if layout == "channels-last" else contextlib.nullcontext():
            for chunk in (int(value) for value in args.chunks.split(",")):
                forward, both = per_example(Chunked(model, chunk), images, args.repeats)
                print(f"  {layout:>13}, {chunk:3d} per call: forward {forward:6.1f}, forward+backward {both:6.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
