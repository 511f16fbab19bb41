#!/usr/bin/env bash
# On the GPU machine: unpack .gpu/ (made by bench/gpu_pack.sh) into /tmp/gpu-data and the wheels into
# /tmp/site, then run bench/gpu_suite.py with "$@" (e.g. --parts fast,fgsm-rs --out /tmp/suite).
set -euo pipefail
mkdir -p /tmp/gpu-data/MNIST/raw
tar -C /tmp/gpu-data -xzf .gpu/cifar10-jpg.tar.gz
for file in .gpu/MNIST/raw/*.gz; do gunzip -c "$file" > "/tmp/gpu-data/MNIST/raw/$(basename "$file" .gz)"; done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/wheels/*.whl
export PYTHONPATH="$PWD/src:/tmp/site" IMGCLF_DATA_DIR=/tmp/gpu-data PYTHONUNBUFFERED=1
python3 bench/gpu_suite.py --cifar /tmp/gpu-data/cifar10-jpg "$@"
