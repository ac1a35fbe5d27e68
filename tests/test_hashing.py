"""One file hash for the whole project (embedder.hashing.file_sha256)."""

from __future__ import annotations

import hashlib

import numpy as np

from headstart.embedder import backbones, hashing
from headstart.heads import runs


def test_file_sha256_is_the_sha256_of_the_bytes_across_read_blocks(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 2 * (1 << 20) + 123, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert hashing.file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert hashing.content_key(path) == hashing.file_sha256(str(path))
    (tmp_path / "empty").write_bytes(b"")
    assert hashing.file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_weights_and_run_checksums_use_the_same_function():
    assert backbones.file_sha256 is hashing.file_sha256
    assert runs.file_sha256 is hashing.file_sha256
