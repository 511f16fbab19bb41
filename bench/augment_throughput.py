"""Augmentation throughput: the batch presets against torchvision's per-image policies, images per second.

Batches of real images from a data set (default: the CIFAR-10 JPEG folder at 32 px), augmented on the
CPU by ``imgclf.data.augment.build_augmentation``, as training does; the model is not involved.

    IMGCLF_DATA_DIR=../shared/data python bench/augment_throughput.py [--dataset cifar10-jpg] [--batches 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

SETTINGS = ("flip-crop", "flip-jitter", "randaugment:n=2,m=9", "trivialaugment", "autoaugment:policy=cifar10",
            "random-erasing:p=0.5", "flip-crop+randaugment:n=2,m=9")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="cifar10-jpg")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    from imgclf.config import DataConfig
    from imgclf.data import load_data
    from imgclf.data.augment import build_augmentation

    torch.set_num_threads(args.threads)
    data = load_data(DataConfig(dataset=args.dataset, image_size=args.image_size,
                                train_examples=args.batch_size * args.batches), seed=0)
    batches = [data.train.float_images(torch.arange(i, i + args.batch_size).numpy())
               for i in range(0, args.batch_size * args.batches, args.batch_size)]
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}; "
          f"{args.dataset} at {args.image_size} px, {args.batches} batches of {args.batch_size}")
    for setting in SETTINGS:
        augment = build_augmentation(setting)
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        augment(batches[0], gen)  # warm-up
        began = time.perf_counter()
        for batch in batches:
            augment(batch, gen)
        seconds = time.perf_counter() - began
        print(f"  {setting:<32} {len(batches) * args.batch_size / seconds:>10,.0f} images/s", flush=True)


if __name__ == "__main__":
    main()
