"""Every default a user can meet, in one place.

The command line's help reads them from here, and so do the functions behind it, so a
default cannot say one thing in ``--help`` and do another. Defaults that depend on the
machine or the data (the core count, a backbone's native size, a head's batch size) are
computed where they are used and described in words in the help.
"""

from __future__ import annotations

# Where things go, relative to the working folder.
CACHE_DIR = "cache"  # embed run's caches (one file per image set and backbone configuration)
RUNS_DIR = "runs"  # head train, sweep, finetune: one folder per run
REPORTS_DIR = "reports"  # inspect: CSVs and pictures

# What embed run computes.
BACKBONE = "MobileNetV2"
WEIGHTS = "imagenet"
POOLING = "avg"
STORAGE_DTYPE = "float16"  # half the size of float32; ample precision for pooled features
RUNTIME = "auto"
PRECISION = "auto"
EMBED_BATCH_SIZE = 32  # images per batch, and the most a crash can lose
PIXEL_LIMIT = 89_478_485  # Pillow's Image.MAX_IMAGE_PIXELS: larger images are refused from their header

# How heads are trained and measured.
VAL_FRACTION = 0.2  # share of images held out when the layout names no validation split
SPLIT_SEED = 0

# predict.
PREDICT_BATCH_SIZE = 32
TOP_K = 3

# finetune (following the keras.io transfer-learning guide: a small learning rate).
FINETUNE_UNFREEZE = 4
FINETUNE_EPOCHS = 10
FINETUNE_LR = 1e-5
FINETUNE_BATCH_SIZE = 16
FINETUNE_PATIENCE = 3

# cache clean: a converted backbone no cache uses, or an interrupted run's parts, untouched this long, may go.
CLEAN_UNUSED_DAYS = 7
