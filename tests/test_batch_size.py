"""`--batch-size auto`: probed on a GPU (here with a simulated device), fixed on CPUs."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from conftest import make_class_folders
from headstart.embedder.batch_size import CPU_BATCH, parse_batch_size, probe_batch_size
from headstart.embedder.errors import UsageError


class FakeDevice:
    """A forward pass costing a launch overhead plus a per-image time, out of memory above a size."""

    def __init__(self, overhead=0.01, per_image=1e-4, memory_images=300):
        self.overhead, self.per_image, self.memory_images = overhead, per_image, memory_images
        self.calls: list[int] = []

    def __call__(self, images):
        self.calls.append(len(images))
        if len(images) > self.memory_images:
            raise type("ResourceExhaustedError", (RuntimeError,), {})("OOM when allocating tensor")
        time.sleep(self.overhead + self.per_image * len(images))
        return np.zeros((len(images), 4), np.float32)


def test_parse_batch_size():
    assert parse_batch_size("auto", 32) is None and parse_batch_size("AUTO", 32) is None
    assert parse_batch_size("64", 32) == 64 and parse_batch_size(None, 32) == 32
    for bad in ("0", "-3", "big", "1.5"):
        with pytest.raises(UsageError, match="--batch-size"):
            parse_batch_size(bad, 32)


def test_probe_stops_at_out_of_memory_and_keeps_the_smallest_near_best_batch():
    device = FakeDevice()
    choice = probe_batch_size(device, 8, on_gpu=True, repeats=2)
    assert choice.probed and list(choice.rates) == [32, 64, 128, 256]  # 512 ran out of memory
    assert "out of device memory" in choice.reason
    best = max(choice.rates.values())
    assert choice.rates[choice.size] >= 0.9 * best
    assert all(choice.rates[s] < 0.9 * best for s in choice.rates if s < choice.size)
    assert 512 in device.calls


def test_probe_stops_once_doubling_stops_paying():
    # No launch overhead: a flat rate. Per-image time long enough (64 ms for 32 images) that a
    # loaded machine's late wake-ups from sleep (a few ms per call) cannot pass for a gain.
    device = FakeDevice(overhead=0.0, per_image=2e-3, memory_images=10_000)
    choice = probe_batch_size(device, 8, on_gpu=True, repeats=2)
    assert len(choice.rates) <= 3 and "gained under" in choice.reason and choice.size == 32


def test_probe_errors():
    with pytest.raises(UsageError, match="does not fit"):
        probe_batch_size(FakeDevice(memory_images=8), 8, on_gpu=True)

    def broken(images):
        raise ValueError("a real bug")

    with pytest.raises(ValueError, match="a real bug"):
        probe_batch_size(broken, 8, on_gpu=True)


def test_cpu_takes_the_fixed_batch_without_probing():
    device = FakeDevice()
    choice = probe_batch_size(device, 8, on_gpu=False)
    assert choice.size == CPU_BATCH and not choice.probed and device.calls == []


def test_embed_run_batch_size_auto_on_this_cpu(tmp_path, run_cli, tiny_model_file):
    make_class_folders(tmp_path / "imgs", per_class=3)
    code, out, err = run_cli("embed", "run", tmp_path / "imgs", "-b", tiny_model_file, "--weights", "none",
                             "--cache", tmp_path / "c.h5", "--batch-size", "auto", "--runtime", "tf", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["batch_size"] == CPU_BATCH and report["batch_probe"] == {} and report["embedded"] == 6
    code, _, err = run_cli("embed", "run", tmp_path / "imgs", "--batch-size", "many")
    assert code == 2 and "--batch-size" in err
