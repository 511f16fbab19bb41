#!/usr/bin/env bash
# Pack what bench/gpu_suite.py needs on a GPU machine that cannot download into .gpu/ (git-ignored, about
# 33 MB, one transfer):
#   .gpu/cifar10-jpg.tar.gz     the CIFAR-10 JPEG folder (about 20 MB): parts fast, fgsm-rs, paths
#   .gpu/MNIST/raw/*.gz         MNIST's four IDX files, gzipped (about 11 MB): parts mnist, attacks
#   .gpu/wheels/                torchattacks and the Adversarial Robustness Toolbox (the attack benchmarks)
# Usage: IMGCLF_DATA_DIR=../shared/data bash bench/gpu_pack.sh   (then see the README, "The published anchors")
set -euo pipefail
data=${IMGCLF_DATA_DIR:-../shared/data}
for need in "$data/cifar10-jpg" "$data/MNIST/raw"; do
    [ -d "$need" ] || { echo "gpu_pack: $need not found (set IMGCLF_DATA_DIR)" >&2; exit 2; }
done
rm -rf .gpu && mkdir -p .gpu/MNIST/raw .gpu/wheels
tar -C "$data" -czf .gpu/cifar10-jpg.tar.gz cifar10-jpg
for file in "$data"/MNIST/raw/*-ubyte; do gzip -c "$file" > ".gpu/MNIST/raw/$(basename "$file").gz"; done
python3 -m pip download -q --no-deps --only-binary=:all: -d .gpu/wheels torchattacks==3.5.1 \
    adversarial-robustness-toolbox==1.20.1
du -sh .gpu
