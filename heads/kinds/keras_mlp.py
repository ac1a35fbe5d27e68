"""A dense head's ``model.keras``, read without Keras and run in numpy.

Importing TensorFlow to load Keras costs ~3 s (12 s on a busy machine), far more than a
LiteRT backbone needs to embed a few images, so ``predict`` of one photo was nine parts
start-up. A dense head is a short chain of matrix products, and a ``.keras`` file is a zip
of ``config.json`` (the layers) and ``model.weights.h5`` (their arrays), both readable with
the standard library and h5py. The run's ``model_sha256`` (checked by ``load_run``) covers
the whole file, so these arrays are exactly what Keras would load.

Only the chain headstart builds is read (:func:`heads.dense.build_dense_head`):
``InputLayer -> [Normalization] -> (Dense [-> Dropout])* -> Dense(softmax)``, float32.
Anything else (another layer, a branch, a dtype policy, weights not named as expected) is
:class:`Unsupported`, and the caller loads the file with Keras instead: never a guess.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONFIG = "config.json"
WEIGHTS = "model.weights.h5"
KERAS_EPSILON = 1e-7  # keras.backend.epsilon(): Normalization divides by max(sqrt(variance), it)
ACTIVATIONS = ("linear", "relu", "softmax")


class Unsupported(Exception):
    """The file is a sound Keras model, but not a chain this module runs (Keras must)."""


class Damaged(Exception):
    """The file is not a readable Keras model (the message says why)."""


@dataclass(frozen=True)
class DenseLayer:
    kernel: np.ndarray  # [in, out] float32
    bias: np.ndarray  # [out] float32 (zeros when the layer has none)
    activation: str  # one of ACTIVATIONS


@dataclass(frozen=True)
class NumpyMLP:
    """``features [N, D] -> probabilities [N, C]``, as Keras computes them in float32."""

    layers: tuple[DenseLayer, ...]
    mean: np.ndarray | None = None  # Normalization, when the head standardises its input
    divisor: np.ndarray | None = None  # max(sqrt(variance), epsilon), as Keras divides

    @property
    def feature_dim(self) -> int:
        return int(self.layers[0].kernel.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.layers[-1].kernel.shape[1])

    def predict_proba(self, features: np.ndarray, chunk: int = 8192) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise ValueError(f"features must be [N, {self.feature_dim}], got {list(x.shape)}")
        return np.concatenate([self._forward(x[i:i + chunk]) for i in range(0, len(x), chunk)]) if len(x) else \
            np.zeros((0, self.num_classes), np.float32)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        if self.mean is not None:
            x = (x - self.mean) / self.divisor
        for layer in self.layers:
            x = x @ layer.kernel + layer.bias
            if layer.activation == "relu":
                x = np.maximum(x, 0.0)
            elif layer.activation == "softmax":
                x = np.exp(x - x.max(axis=1, keepdims=True))
                x /= x.sum(axis=1, keepdims=True)
        return x.astype(np.float32, copy=False)


def read_keras_mlp(path: str | Path) -> NumpyMLP:
    """The head in ``path`` as a :class:`NumpyMLP`; raises :class:`Unsupported` or :class:`Damaged`."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read(CONFIG))
            weights = archive.read(WEIGHTS)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise Damaged(f"{type(exc).__name__}: {_first_line(exc)}") from None
    layers = _chain(config)
    arrays = _named_arrays(weights)
    return _assemble(layers, arrays)


def _chain(config: dict) -> list[dict]:
    """The model's layers in order, checked to form one straight chain of supported layers."""
    if not isinstance(config, dict) or config.get("class_name") not in ("Functional", "Sequential"):
        raise Unsupported(f"a {config.get('class_name') if isinstance(config, dict) else 'non-object'} model")
    body = config.get("config") or {}
    layers = body.get("layers")
    if not isinstance(layers, list) or len(layers) < 2:
        raise Unsupported("no layer list")
    previous = None
    for layer in layers:
        inbound = layer.get("inbound_nodes") or []
        sources = [arg["config"]["keras_history"][0] for node in inbound for arg in node.get("args", [])
                   if isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__"]
        if previous is None:
            if layer.get("class_name") != "InputLayer" or inbound:
                raise Unsupported("the first layer is not the input")
        elif sources != [previous]:
            raise Unsupported(f"layer {layer.get('name')!r} does not follow {previous!r} alone")
        if layer.get("class_name") not in ("InputLayer", "Normalization", "Dense", "Dropout"):
            raise Unsupported(f"a {layer.get('class_name')} layer")
        dtype = (layer.get("config") or {}).get("dtype")
        policy = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
        if policy not in (None, "float32"):
            raise Unsupported(f"layer {layer.get('name')!r} computes in {policy}")
        previous = layer.get("name")
    outputs = body.get("output_layers")
    if outputs and [o[0] for o in ([outputs] if isinstance(outputs[0], str) else outputs)] != [previous]:
        raise Unsupported("the output is not the last layer")
    return layers


def _named_arrays(weights: bytes) -> dict[str, list[np.ndarray]]:
    """Layer name -> its variables in order, from the weights file (Keras 3 layout:
    ``layers/<key>/vars/<i>`` with the layer's name in the ``vars`` group's attributes)."""
    import h5py

    found: dict[str, list[np.ndarray]] = {}
    try:
        with h5py.File(io.BytesIO(weights), "r") as h5:
            group = h5.get("layers")
            if group is None:
                raise Unsupported("no layers group in the weights file")
            for key in group:
                variables = group[key].get("vars")
                if variables is None:
                    continue
                name = variables.attrs.get("name")
                if name is None:
                    raise Unsupported("weights without layer names (an older Keras wrote them)")
                name = name.decode() if isinstance(name, bytes) else str(name)
                found[name] = [np.asarray(variables[str(i)], dtype=np.float32) for i in range(len(variables))]
    except Unsupported:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise Damaged(f"its weights are not readable ({type(exc).__name__}: {_first_line(exc)})") from None
    return found


def _assemble(layers: list[dict], arrays: dict[str, list[np.ndarray]]) -> NumpyMLP:
    dense: list[DenseLayer] = []
    mean = divisor = None
    width = None
    for layer in layers:
        kind, cfg = layer["class_name"], layer.get("config") or {}
        if kind == "InputLayer":
            shape = cfg.get("batch_shape") or cfg.get("batch_input_shape") or []
            if len(shape) != 2 or not isinstance(shape[1], int):
                raise Unsupported(f"input shape {shape}")
            width = shape[1]
        elif kind == "Normalization":
            axis = cfg.get("axis")
            if dense or mean is not None or cfg.get("invert") or axis not in (-1, [-1], (-1,), 1, [1]) \
                    or cfg.get("mean") is None or cfg.get("variance") is None:
                raise Unsupported("a Normalization other than a fixed, per-feature first layer")
            mean = np.asarray(cfg["mean"], dtype=np.float32).reshape(-1)
            variance = np.asarray(cfg["variance"], dtype=np.float32).reshape(-1)
            if mean.shape != (width,) or variance.shape != (width,):
                raise Damaged(f"its Normalization holds {mean.size} values for {width} features")
            divisor = np.maximum(np.sqrt(variance), np.float32(KERAS_EPSILON)).astype(np.float32)
        elif kind == "Dense":
            activation = cfg.get("activation")
            if activation not in ACTIVATIONS or cfg.get("quantization_config") or cfg.get("lora_rank"):
                raise Unsupported(f"a Dense layer with activation {activation!r}")
            if activation == "softmax" and layer is not layers[-1]:
                raise Unsupported("softmax before the last layer")
            variables = arrays.get(cfg.get("name"))
            if variables is None:
                raise Unsupported(f"no weights named {cfg.get('name')!r}")
            use_bias = cfg.get("use_bias", True)
            if len(variables) != (2 if use_bias else 1):
                raise Damaged(f"layer {cfg.get('name')!r} holds {len(variables)} arrays")
            kernel = variables[0]
            bias = variables[1] if use_bias else np.zeros(kernel.shape[-1], np.float32)
            if kernel.ndim != 2 or kernel.shape[0] != width or bias.shape != (kernel.shape[1],):
                raise Damaged(f"layer {cfg.get('name')!r} has shapes {list(kernel.shape)}, {list(bias.shape)} "
                              f"after {width} values")
            dense.append(DenseLayer(np.ascontiguousarray(kernel), bias, activation))
            width = kernel.shape[1]
    if not dense or dense[-1].activation != "softmax":
        raise Unsupported("the last layer is not a softmax Dense")
    return NumpyMLP(tuple(dense), mean, divisor)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
