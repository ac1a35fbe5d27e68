#!/usr/bin/env bash
# One command from a fresh clone: a virtual environment, a generated sample image set, and
# the embedding job over it. No download beyond PyPI packages.
#
# Weights: ResNet50 with RANDOM weights (--weights none), whose features are O(1) and so
# exercise the whole machinery; they say nothing about accuracy. With network access, drop
# `--weights none` to get the ImageNet weights (downloaded once by Keras).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
.venv/bin/python examples/make_sample_images.py examples/sample_images
.venv/bin/headstart embed run examples/sample_images --backbone ResNet50 --weights none --image-size 96
.venv/bin/headstart embed info
