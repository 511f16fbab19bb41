"""Benchmark: training throughput on MNIST four ways, and imgclf's data path alone.

Part 1 trains the same network (imgclf's ``simple-cnn``: two 3x3 convolutions of
32 filters with ReLU and max-pooling, linear head) on the same 48,000 MNIST
training images for the same epochs and batch size, and reports training images
per second, seconds per epoch and test accuracy for:

1. the plain torchvision pipeline a notebook would use (``datasets.MNIST`` +
   ``ToTensor`` + ``Normalize`` + ``DataLoader``, Adam);
2. Keras 3 on TensorFlow's CPU build with ``model.fit`` (run by ``--keras-python``,
   an interpreter that has TensorFlow; TensorFlow is a benchmark-only dependency);
3. imgclf (``imgclf.fit``: in-memory batches, channels-last), once with the same
   recipe as the plain pipeline (Adam, lr 1e-3, constant) so that accuracies compare,
   once with imgclf's defaults (AdamW, one-cycle);
4. the model's compute-bound ceiling: forward, backward and optimizer step on one
   fixed in-memory channels-last batch.

Part 2 measures what imgclf's data path alone delivers on the CIFAR-10 JPEG folder:
the first load (decoding every file into the decoded-image cache), a second load
with the same settings (from the cache, no decoding), and augmented batches
(``flip-crop``) per second from memory.

    IMGCLF_DATA_DIR=../shared/data python bench/data_throughput.py \\
        --keras-python .venv-bench/bin/python

Targets (issue "Data"): imgclf >= 2.5x the plain pipeline and >= 1.3x Keras at the
same test accuracy (+-0.5 points); >= 50,000 augmented images/s from the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent


def hardware() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def plain_torchvision(root: Path, train_rows: np.ndarray, epochs: int, batch_size: int) -> dict:
    """The plain pipeline: per-image PIL -> ToTensor -> Normalize in a DataLoader."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from imgclf.models.small import simple_cnn

    torch.manual_seed(0)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train = Subset(datasets.MNIST(str(root), train=True, transform=tf), train_rows.tolist())
    test = datasets.MNIST(str(root), train=False, transform=tf)
    model = simple_cnn(channels=1, image_size=(28, 28), num_classes=10, filters=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    loader = DataLoader(train, batch_size=batch_size, shuffle=True)
    seconds = []
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for images, labels in loader:
            optimizer.zero_grad()
            loss_fn(model(images), labels).backward()
            optimizer.step()
        seconds.append(time.perf_counter() - start)
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in DataLoader(test, batch_size=1000):
            correct += int((model(images).argmax(1) == labels).sum())
    return {"images_per_second": len(train) * epochs / sum(seconds), "seconds_per_epoch": np.mean(seconds),
            "test_accuracy": correct / len(test)}


SAME_RECIPE = {"optimizer": "adam", "lr": 1e-3, "schedule": "constant", "weight_decay": 0.0}


def imgclf_fit(data, epochs: int, batch_size: int, recipe: dict | None = None) -> dict:
    from imgclf.config import TrainConfig
    from imgclf.evaluation import evaluate
    from imgclf.models import create_model
    from imgclf.training import fit

    torch.manual_seed(0)
    s = data.spec
    model = create_model("simple-cnn", channels=1, image_size=s.image_size, num_classes=10, mean=s.mean, std=s.std)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, **(recipe or {}))
    result = fit(model, data, config, augment="none",
                 device=torch.device("cpu"), seed=0, log=lambda line: None, quiet=True)
    train_seconds = sum(row["train_seconds"] for row in result.history)
    accuracy = evaluate(model, data.test, list(s.class_names), device=torch.device("cpu")).metrics.accuracy
    return {"images_per_second": len(data.train) * epochs / train_seconds,
            "seconds_per_epoch": float(np.mean([row["seconds"] for row in result.history])),
            "test_accuracy": accuracy}


def ceiling(data, batch_size: int, steps: int = 300) -> dict:
    from imgclf.models import create_model

    torch.manual_seed(0)
    s = data.spec
    model = create_model("simple-cnn", channels=1, image_size=s.image_size, num_classes=10, mean=s.mean, std=s.std)
    model = model.to(memory_format=torch.channels_last).train()
    images = data.train.float_images(np.arange(batch_size)).contiguous(memory_format=torch.channels_last)
    labels = data.train.labels[:batch_size]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    for step in range(steps + 20):
        if step == 20:
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), labels).backward()
        optimizer.step()
    return {"images_per_second": steps * batch_size / (time.perf_counter() - start)}


def keras(python: str, data, epochs: int, batch_size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mnist.npz"
        np.savez(path, x_train=data.train.images.numpy(), y_train=data.train.labels.numpy(),
                 x_test=data.test.images.numpy(), y_test=data.test.labels.numpy(),
                 mean=data.spec.mean[0], std=data.spec.std[0])
        done = subprocess.run([python, str(HERE / "keras_mnist.py"), str(path), "--epochs", str(epochs),
                               "--batch-size", str(batch_size)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def data_path(folder: Path, batch_size: int, passes: int) -> None:
    from imgclf.config import DataConfig
    from imgclf.data import iterate_batches, load_data

    with tempfile.TemporaryDirectory() as cache:
        os.environ["IMGCLF_CACHE_DIR"] = cache
        config = DataConfig(dataset=str(folder))
        start = time.perf_counter()
        first = load_data(config, seed=0)
        decode = time.perf_counter() - start
        total = len(first.train) + len(first.val) + len(first.test)
        start = time.perf_counter()
        data = load_data(config, seed=0)
        cached = time.perf_counter() - start
        gen = torch.Generator().manual_seed(0)
        seen = 0
        start = time.perf_counter()
        for _ in range(passes):
            for images, _labels in iterate_batches(data.train, batch_size=batch_size, device=torch.device("cpu"),
                                                   shuffle=True, generator=gen, augment="flip-crop"):
                seen += images.shape[0]
        augmented = seen / (time.perf_counter() - start)
    print(f"\ndata path alone on {folder} ({total:,} JPEG files, 32x32 RGB):")
    print(f"  first load, decoding every file into the cache: {decode:6.1f} s  ({total / decode:>9,.0f} images/s)")
    print(f"  second load, same settings, from the cache:     {cached:6.1f} s  ({total / cached:>9,.0f} images/s, "
          "no decoding)")
    print(f"  augmented batches (flip-crop, batch {batch_size}) from memory: {augmented:>9,.0f} images/s "
          f"({'OK' if augmented >= 50000 else 'below'} the 50,000 target)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--keras-python", help="an interpreter with TensorFlow and Keras 3 (skipped if absent)")
    parser.add_argument("--skip-mnist", action="store_true")
    parser.add_argument("--skip-cifar", action="store_true")
    args = parser.parse_args()
    from imgclf.config import DataConfig
    from imgclf.data import load_data, resolve_data_dir

    print(f"hardware: {hardware()}")
    root = resolve_data_dir(None)
    if not args.skip_mnist:
        data = load_data(DataConfig(dataset="mnist"), seed=0)
        print(f"MNIST, simple-cnn, {len(data.train):,} training images, batch {args.batch_size}, "
              f"{args.epochs} epoch(s):")
        rows = {"plain torchvision pipeline": plain_torchvision(root, data.train.indices, args.epochs, args.batch_size)}
        if args.keras_python:
            rows["Keras 3 / TensorFlow model.fit"] = keras(args.keras_python, data, args.epochs, args.batch_size)
        rows["imgclf, same recipe (Adam 1e-3)"] = imgclf_fit(data, args.epochs, args.batch_size, SAME_RECIPE)
        rows["imgclf, its defaults"] = imgclf_fit(data, args.epochs, args.batch_size)
        rows["ceiling (one fixed batch)"] = ceiling(data, args.batch_size)
        ours = rows["imgclf, same recipe (Adam 1e-3)"]["images_per_second"]
        for name, row in rows.items():
            ratio = ours / row["images_per_second"]
            acc = f"{row['test_accuracy']:.4f}" if "test_accuracy" in row else "   -  "
            epoch = f"{row['seconds_per_epoch']:6.1f} s/epoch" if "seconds_per_epoch" in row else " " * 14
            print(f"  {name:<32} {row['images_per_second']:>7,.0f} images/s  {epoch}  test accuracy {acc}  "
                  f"same-recipe imgclf = {ratio:.2f}x this")
    if not args.skip_cifar:
        data_path(root / "cifar10-jpg", batch_size=512, passes=3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
