"""Which runtime runs a network forward: TensorFlow, or LiteRT (``--runtime auto|tf|litert``).

``auto`` picks LiteRT when no GPU is visible and the network converts (and matches
TensorFlow on a probe batch), TensorFlow otherwise, and says which and why. ``litert``
insists: a network that does not convert is a one-line error. Both give the same numbers
within 1e-4 relative, so the choice is recorded but is not part of the fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import UsageError
from .litert import RUNTIMES, ConversionError, load_or_convert


@dataclass
class Forward:
    """A forward pass over batches of pixels, and how it was chosen."""

    fn: Callable  # images [B, S, S, 3] float32 -> outputs [B, ...]
    runtime: str  # 'tf' | 'litert'
    image_size: int
    reason: str
    replicas: int = 1  # devices a batch is split over (global batch = per-device batch x replicas)
    jit: bool = False

    def __call__(self, images):
        return self.fn(images)


def make_forward(runtime: str, key: str, build_model: Callable[[], object], cache_dir: Path,
                 describe: dict | None = None, log: Callable[[str], None] = lambda m: None,
                 jit: bool | None = None, devices: str | list[int] | None = None,
                 mixed_precision: bool = False) -> Forward:
    """The forward pass for the network ``build_model()`` would build, identified by ``key``.

    ``build_model`` is only called when needed: a LiteRT flatbuffer kept from an earlier
    run makes building the Keras model unnecessary. Several ``devices``, XLA (``jit``) and
    mixed precision are TensorFlow's: ``auto`` then chooses TensorFlow and ``litert`` is
    an error. ``jit=None`` means on with a GPU, off without (XLA was slower on CPUs).
    """
    if runtime not in RUNTIMES:
        raise UsageError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    from .devices import mirrored_strategy, select_devices
    from .tf_runtime import gpus_visible

    device_names = select_devices(devices)
    strategy = mirrored_strategy(device_names)
    tf_only = [why for why, on in (("several devices", strategy is not None), ("--jit", bool(jit)),
                                   ("mixed precision", mixed_precision)) if on]
    if runtime == "litert" and tf_only:
        raise UsageError(f"--runtime litert cannot run {tf_only[0]}; use --runtime tf (or auto)")
    built: list = []

    def model():
        if not built:
            if strategy is not None:
                with strategy.scope():
                    built.append(build_model())
            else:
                built.append(build_model())
        return built[0]

    reason = "asked for"
    if runtime == "auto":
        if tf_only:
            runtime, reason = "tf", f"{tf_only[0]} asked for"
        elif gpus_visible():
            runtime, reason = "tf", "a GPU is visible"
        else:
            try:
                lite = load_or_convert(key, describe or {}, model, cache_dir, log=log)
                return Forward(lite, "litert", lite.image_size, f"no GPU is visible; {lite.layout}")
            except (ConversionError, UsageError) as exc:
                runtime, reason = "tf", f"LiteRT is not available for it ({exc})"
    elif runtime == "litert":
        lite = load_or_convert(key, describe or {}, model, cache_dir, log=log)
        return Forward(lite, "litert", lite.image_size, f"{reason}; {lite.layout}")
    from .pipeline import compiled_forward

    network = model()
    size = int(network.inputs[0].shape[1])
    use_jit = gpus_visible() if jit is None else jit
    fn = compiled_forward(network, size, jit_compile=use_jit, strategy=strategy)
    if strategy is not None:
        reason += f"; {len(device_names)} devices: {', '.join(device_names)}"
    return Forward(fn, "tf", size, reason, replicas=max(1, len(device_names)), jit=use_jit)
