"""The backbone registry: one name -> a frozen feature extractor on RGB pixels in [0, 255].

Like timm's ``create_model``, one function builds every backbone: :func:`build_backbone`
takes a :class:`BackboneConfig`, and :func:`resolve` (cheap, no TensorFlow) turns that
config into the *fingerprint* that names the numbers it will produce.

Every built backbone has the same shape of contract, so the rest of the tool never cares
which family it got: input ``pixels`` float32 ``[B, S, S, 3]`` with RGB values in [0, 255];
each family's own ``preprocess_input`` applied *inside* the network (built from standard
Keras layers, so exported models load anywhere); output ``[B, D]`` after pooling.
"""

from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from .errors import BackboneError, UsageError
from .hashing import file_sha256

POOLINGS = ("avg", "max", "flatten")
PREPROCESS_LAYER_PREFIX = "headstart_preprocess"
PRECISIONS = ("auto", "float32", "mixed", "bf16")
# --precision -> the fingerprint's compute_dtype. bf16 runs on OpenVINO, on CPUs with AVX512_BF16
# or AMX (embedder.runtimes.openvino); its rows never mix with float32 ones.
COMPUTE_DTYPES = {"float32": "float32", "mixed": "mixed_float16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one ``keras.applications`` family member and feed it."""

    name: str
    native_size: int
    preprocessing: str  # 'tf' [-1, 1] | 'torch' ImageNet mean/std | 'caffe' BGR minus mean | 'none' (inside Keras' model)
    min_size: int = 32
    has_alpha: bool = False
    constructor: str = ""  # attribute of keras.applications; defaults to name

    @property
    def attr(self) -> str:
        return self.constructor or self.name


def _specs() -> list[BackboneSpec]:
    s: list[BackboneSpec] = [
        BackboneSpec("MobileNet", 224, "tf", has_alpha=True),
        BackboneSpec("MobileNetV2", 224, "tf", has_alpha=True),
        BackboneSpec("MobileNetV3Small", 224, "none", has_alpha=True),
        BackboneSpec("MobileNetV3Large", 224, "none", has_alpha=True),
    ]
    for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600)):
        s.append(BackboneSpec(f"EfficientNetB{i}", size, "none"))
    for name, size in (("B0", 224), ("B1", 240), ("B2", 260), ("B3", 300), ("S", 384), ("M", 480), ("L", 480)):
        s.append(BackboneSpec(f"EfficientNetV2{name}", size, "none"))
    for depth in (50, 101, 152):
        s.append(BackboneSpec(f"ResNet{depth}", 224, "caffe"))
        s.append(BackboneSpec(f"ResNet{depth}V2", 224, "tf"))
    s += [
        BackboneSpec("VGG16", 224, "caffe"),
        BackboneSpec("VGG19", 224, "caffe"),
        BackboneSpec("InceptionV3", 299, "tf", min_size=75),
        BackboneSpec("InceptionResNetV2", 299, "tf", min_size=75),
        BackboneSpec("Xception", 299, "tf", min_size=71),
        BackboneSpec("DenseNet121", 224, "torch"),
        BackboneSpec("DenseNet169", 224, "torch"),
        BackboneSpec("DenseNet201", 224, "torch"),
    ]
    for size_name in ("Tiny", "Small", "Base", "Large", "XLarge"):
        s.append(BackboneSpec(f"ConvNeXt{size_name}", 224, "none"))
    return s


REGISTRY: dict[str, BackboneSpec] = {spec.name: spec for spec in _specs()}


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_NORMALISED = {_normalise(n): spec for n, spec in REGISTRY.items()}


def is_model_file(backbone: str) -> bool:
    return backbone.lower().endswith((".keras", ".h5")) or "/" in backbone or Path(backbone).is_file()


def get_spec(name: str) -> BackboneSpec:
    spec = _BY_NORMALISED.get(_normalise(name))
    if spec is None:
        close = difflib.get_close_matches(name, list(REGISTRY), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UsageError(
            f"unknown backbone {name!r}; {hint}`headstart embed backbones` lists them, or pass a .keras model file"
        )
    return spec


@dataclass
class BackboneConfig:
    """What the user asked for. ``resolve`` turns it into a fingerprint."""

    backbone: str = "MobileNetV2"
    weights: str = "imagenet"  # 'imagenet' | 'none' | path to a weights file
    image_size: int | None = None  # None: the family's native size (or the model file's)
    pooling: str = "avg"
    layer: str | None = None
    alpha: float | None = None
    seed: int = 0
    precision: str = "auto"  # 'auto' (mixed with a GPU, else float32) | 'float32' | 'mixed' | 'bf16'
    # How bytes become pixels (embedder.decode.RECIPES): 'current' | 'legacy' | 'nvjpeg'; 'auto' is
    # the current rule, except that a run continuing a cache of another rule keeps that rule.
    pixels: str = "auto"


def resolve_precision(precision: str) -> str:
    """'float32', 'mixed' or 'bf16'; 'auto' is mixed only where a GPU is (see devices.gpu_likely).

    'auto' stays float32 on CPUs, even those with bfloat16: on hymenoptera, logistic regression
    on bf16 features scored 0.6-1.3 points away from float32 (higher, as it happens; issue 16),
    not within the 0.5 a default may move, and no bf16 CPU was at hand to measure it again.
    Whether this CPU can compute in bf16 is checked where it runs (the OpenVINO runtime), so
    that reading, exporting or reusing a bf16 cache needs no such CPU.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        from .devices import gpu_likely

        return "mixed" if gpu_likely() else "float32"
    return precision


@dataclass
class ResolvedBackbone:
    config: BackboneConfig
    spec: BackboneSpec | None  # None for a user's model file
    image_size: int | None  # None only for a model file whose size is read at build time
    fingerprint: dict = field(default_factory=dict)
    source: str = "keras.applications"  # the SOURCES entry that claimed config.backbone

    @property
    def short_name(self) -> str:
        if self.spec is None:
            return _normalise(Path(self.config.backbone).stem)[:24] or "model"
        alpha = f"{self.config.alpha:g}" if self.spec.has_alpha and self.config.alpha else ""
        return _normalise(self.spec.name) + (f"-{alpha}" if alpha else "")


def _keras_version() -> str:
    try:
        return metadata.version("keras")
    except metadata.PackageNotFoundError:  # pragma: no cover - keras always ships with TF here
        return "unknown"


def _pixel_fields(config: BackboneConfig) -> dict:
    from .decode import RECIPES

    recipe = RECIPES.get("current" if config.pixels == "auto" else config.pixels)
    if recipe is None:
        raise UsageError(f"unknown pixel rule {config.pixels!r}; use one of {', '.join(RECIPES)}")
    return dict(recipe.fingerprint)


def resolve(config: BackboneConfig) -> ResolvedBackbone:
    """Validate the config and compute its fingerprint, without importing TensorFlow."""
    if config.pooling not in POOLINGS:
        raise UsageError(f"unknown pooling {config.pooling!r}; use one of {', '.join(POOLINGS)}")
    if config.image_size is not None and config.image_size < 1:
        raise UsageError(f"--image-size must be positive, got {config.image_size}")
    source = source_for(config.backbone)
    spec, size, identity = source.identify(config)
    fingerprint = {
        "architecture": identity.pop("architecture"),
        "weights": identity.pop("weights"),
        "input_size": identity.pop("input_size"),
        "pooling": config.pooling,
        "preprocessing": identity.pop("preprocessing"),
        "layer": config.layer or "",
        "compute_dtype": COMPUTE_DTYPES[resolve_precision(config.precision)],
        **_pixel_fields(config),
        **identity,  # whatever else names the network for this source (alpha)
    }
    return ResolvedBackbone(config, spec, size, fingerprint, source=source.name)


def _weights_identity(config: BackboneConfig) -> str:
    weights = config.weights
    if weights == "imagenet":
        return f"imagenet:keras-{_keras_version()}"
    if weights == "none":
        return f"none:seed={config.seed}"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UsageError(f"--weights: no such file {weights!r} (use imagenet, none, or a weights file)")
    return f"sha256:{file_sha256(path)}"


def config_from_fingerprint(fingerprint: dict, backbone_source: str | None = None,
                            weights_source: str | None = None) -> ResolvedBackbone:
    """Rebuild the config that produced ``fingerprint`` (for fine-tune, predict, export).

    The fingerprint names weights files and model files by hash only; the cache records
    where they were (``backbone_source``, ``weights_source``). The rebuilt config must
    resolve to the very same fingerprint, or this raises an error naming both.
    """
    from .decode import recipe_for
    from .fingerprint import require_same

    backbone, weights, seed = source_for_fingerprint(fingerprint).recreate(fingerprint, backbone_source,
                                                                            weights_source)
    precision = {v: k for k, v in COMPUTE_DTYPES.items()}.get(fingerprint.get("compute_dtype", "float32"), "float32")
    config = BackboneConfig(
        backbone=backbone, weights=weights, seed=seed,
        image_size=int(fingerprint.get("input_size") or 0) or None,
        pooling=fingerprint.get("pooling", "avg"), layer=fingerprint.get("layer") or None,
        alpha=fingerprint.get("alpha"), precision=precision, pixels=recipe_for(fingerprint).name,
    )
    resolved = resolve(config)
    require_same(resolved.fingerprint, fingerprint, "the backbone rebuilt now", "the one recorded")
    return resolved


# --------------------------------------------------------------------------------------
# Backbone sources: where a --backbone value comes from


class BackboneSource:
    """Where a ``--backbone`` value comes from. Adding one is a subclass and a line in SOURCES.

    * ``claims``: whether this source takes a ``--backbone`` value (the first source that
      claims it wins, so specific sources come before the registry);
    * ``owns``: whether a recorded fingerprint was made by this source;
    * ``identify``: the registry spec (or None), the input size (None: read at build time)
      and the fingerprint fields that name the network: architecture, weights, input_size,
      preprocessing, plus any of its own (alpha);
    * ``recreate``: the (backbone, weights, seed) that resolve to a recorded fingerprint
      again, for ``finetune``, ``predict`` and ``export``;
    * ``build``: the Keras network (pixels already preprocessed) and its input size.
    """

    name: str

    def claims(self, backbone: str) -> bool:
        raise NotImplementedError

    def owns(self, fingerprint: dict) -> bool:
        raise NotImplementedError

    def identify(self, config: BackboneConfig) -> tuple[BackboneSpec | None, int | None, dict]:
        raise NotImplementedError

    def recreate(self, fingerprint: dict, backbone_source: str | None,
                 weights_source: str | None) -> tuple[str, str, int]:
        raise NotImplementedError

    def build(self, keras, resolved: ResolvedBackbone):
        raise NotImplementedError


class ModelFileSource(BackboneSource):
    """A user's own Keras model file (``.keras``/``.h5``): named by the hash of its bytes."""

    name = "model-file"
    architecture = "keras-model"

    def claims(self, backbone: str) -> bool:
        return is_model_file(backbone)

    def owns(self, fingerprint: dict) -> bool:
        return fingerprint.get("architecture") == self.architecture

    def identify(self, config: BackboneConfig) -> tuple[BackboneSpec | None, int | None, dict]:
        path = Path(config.backbone).expanduser()
        if not path.is_file():
            raise UsageError(f"backbone model file not found: {config.backbone}")
        if config.weights not in ("imagenet", "none"):
            raise UsageError("--weights does not apply to a model file: the file carries its own weights")
        if config.alpha is not None:
            raise UsageError("--alpha applies to MobileNet families only, not to a model file")
        return None, config.image_size, {
            "architecture": self.architecture,
            "weights": f"sha256:{file_sha256(path)}",
            "input_size": config.image_size or 0,  # 0 until the file's own size is read
            "preprocessing": "model",
        }

    def recreate(self, fingerprint: dict, backbone_source: str | None,
                 weights_source: str | None) -> tuple[str, str, int]:
        backbone = backbone_source or ""
        if not backbone or not Path(backbone).is_file():
            raise UsageError(f"the backbone model file {backbone or '(unknown)'} is gone; restore it to rebuild the backbone")
        return backbone, "imagenet", 0

    def build(self, keras, resolved: ResolvedBackbone):
        return _load_model_file(keras, resolved)


class KerasApplicationsSource(BackboneSource):
    """A registered ``keras.applications`` family member (the REGISTRY above)."""

    name = "keras.applications"

    def claims(self, backbone: str) -> bool:
        return True  # the last resort: get_spec names the closest registered backbone

    def owns(self, fingerprint: dict) -> bool:
        return True

    def identify(self, config: BackboneConfig) -> tuple[BackboneSpec | None, int | None, dict]:
        spec = get_spec(config.backbone)
        size = config.image_size or spec.native_size
        if size < spec.min_size:
            raise UsageError(f"{spec.name} needs --image-size >= {spec.min_size}, got {size}")
        if config.alpha is not None and not spec.has_alpha:
            raise UsageError(f"--alpha applies to MobileNet families only, not {spec.name}")
        identity = {"architecture": spec.name, "weights": _weights_identity(config), "input_size": size,
                    "preprocessing": spec.preprocessing}
        if spec.has_alpha:
            identity["alpha"] = float(config.alpha if config.alpha is not None else 1.0)
        return spec, size, identity

    def recreate(self, fingerprint: dict, backbone_source: str | None,
                 weights_source: str | None) -> tuple[str, str, int]:
        weights_id = str(fingerprint.get("weights", ""))
        if weights_id.startswith("imagenet"):
            return fingerprint.get("architecture", ""), "imagenet", 0
        if weights_id.startswith("none:seed="):
            return fingerprint.get("architecture", ""), "none", int(weights_id.split("=", 1)[1])
        weights = weights_source or ""
        if not weights or not Path(weights).is_file():
            raise UsageError(
                f"the weights file {weights or '(unknown)'} ({weights_id[:19]}…) is gone; restore it to rebuild the backbone")
        return fingerprint.get("architecture", ""), weights, 0

    def build(self, keras, resolved: ResolvedBackbone):
        return _build_application(keras, resolved), resolved.image_size


SOURCES: dict[str, BackboneSource] = {source.name: source for source in (
    ModelFileSource(), KerasApplicationsSource())}


def source_for(backbone: str) -> BackboneSource:
    """The first source that claims a ``--backbone`` value."""
    return next(source for source in SOURCES.values() if source.claims(backbone))


def source_for_fingerprint(fingerprint: dict) -> BackboneSource:
    """The source that made a recorded fingerprint."""
    return next(source for source in SOURCES.values() if source.owns(fingerprint))


# --------------------------------------------------------------------------------------
# Building (imports TensorFlow/Keras)


def build_backbone(resolved: ResolvedBackbone, keras=None):
    """The frozen feature extractor for ``resolved``: pixels [0, 255] -> pooled features.

    For a model file, the input size is the file's own (read it from ``model.inputs``; the
    fingerprint keeps 0). With ``compute_dtype`` mixed_float16 the network computes in
    float16 (Keras mixed precision) and still returns float32 features. With bfloat16 the
    Keras network is the float32 one: the runtime (OpenVINO) computes it in bfloat16, and
    checks that against this float32 reference.

    ``keras``: the Keras to build with; by default TensorFlow's. The jax and torch runtimes
    pass their worker's Keras, already on that backend (:mod:`embedder.runtimes.worker`):
    everything below is plain Keras 3 API, the same on every backend.
    """
    if keras is None:
        from .tf_runtime import import_keras

        keras = import_keras()
    mixed = resolved.fingerprint.get("compute_dtype") == COMPUTE_DTYPES["mixed"]
    previous = keras.mixed_precision.global_policy()
    if mixed:  # every layer built below computes in float16, keeps float32 weights
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        base, size = SOURCES[resolved.source].build(keras, resolved)
        preprocessing = resolved.fingerprint["preprocessing"]
        base = _select_layer(keras, base, resolved.config.layer)
        base.trainable = False

        inputs = keras.Input((size, size, 3), dtype="float32", name="pixels")
        x = preprocessing_layers(keras, preprocessing)(inputs)
        x = base(x, training=False)
        x = _pool(keras, x, resolved.config.pooling)
        if mixed:  # features leave the network as float32 whatever it computed in
            x = keras.layers.Activation("linear", dtype="float32", name="features_float32")(x)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    model = keras.Model(inputs, x, name=f"headstart_{resolved.short_name}")
    model.trainable = False
    return model


def _build_application(keras, resolved: ResolvedBackbone):
    spec, config = resolved.spec, resolved.config
    constructor = getattr(keras.applications, spec.attr)
    kwargs = dict(include_top=False, input_shape=(resolved.image_size, resolved.image_size, 3), pooling=None)
    if spec.has_alpha and config.alpha is not None:
        kwargs["alpha"] = config.alpha
    weights_file = None
    if config.weights == "none":
        keras.utils.set_random_seed(config.seed)
        kwargs["weights"] = None
    elif config.weights == "imagenet":
        kwargs["weights"] = "imagenet"
    else:
        weights_file = Path(config.weights).expanduser()
        kwargs["weights"] = None  # loaded below, where a misfit can be caught
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras' size/shape advice; a bad size fails below
            model = constructor(**kwargs)
    except Exception as exc:  # Keras raises plain Exception/ValueError for all of these
        text = " ".join(str(exc).split())
        if config.weights == "imagenet" and ("URL fetch failure" in text or "urlopen" in text.lower()
                                             or isinstance(exc, OSError)):
            raise BackboneError(
                f"could not download ImageNet weights for {spec.name} (no network?); "
                f"pass --weights FILE (a Keras weights file for this architecture) or --weights none"
            ) from None
        raise BackboneError(f"cannot build {describe_architecture(resolved)}: {text[:200]}") from None
    if weights_file is not None:
        load_weights_strictly(model, weights_file, describe_architecture(resolved))
    return model


def _weight_shapes_in_file(path: Path) -> list[tuple[int, ...]]:
    import h5py

    shapes: list[tuple[int, ...]] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and not name.startswith("optimizer"):
            shapes.append(tuple(int(d) for d in obj.shape))

    with h5py.File(path, "r") as h5:
        h5.visititems(visit)
    return shapes


def load_weights_strictly(model, path: Path, what: str) -> None:
    """``model.load_weights`` that refuses any misfit.

    Keras 3 only *warns* when a weights file does not match (and keeps the random
    initialisation of what it skipped): a silent cache of garbage. Compare the arrays'
    shapes first, and treat any skip warning as the error it is.
    """
    try:
        file_shapes = _weight_shapes_in_file(path)
    except OSError as exc:
        raise BackboneError(f"weights file {path} is not a readable HDF5 weights file ({exc})") from None
    model_shapes = [tuple(int(d) for d in w.shape) for w in model.weights]
    if sorted(file_shapes) != sorted(model_shapes):
        file_values = sum(int(np.prod(s)) for s in file_shapes)
        model_values = sum(int(np.prod(s)) for s in model_shapes)
        raise BackboneError(
            f"weights file {path} does not fit {what}: it holds {len(file_shapes)} arrays "
            f"({file_values:,} values), the network needs {len(model_shapes)} ({model_values:,})"
        )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(str(path))
    except Exception as exc:
        raise BackboneError(f"weights file {path} does not fit {what}: {' '.join(str(exc).split())[:200]}") from None
    skipped = [str(w.message) for w in caught if "skip" in str(w.message).lower() or "mismatch" in str(w.message).lower()]
    if skipped:
        raise BackboneError(f"weights file {path} does not fit {what}: {' '.join(skipped[0].split())[:200]}")


def network_key(fingerprint: dict) -> str:
    """Names a backbone's network (what a converted copy is kept under): the fingerprint
    without the pixel rule, which changes the inputs, not the network."""
    from .decode import PIXEL_FIELDS
    from .fingerprint import fingerprint_id

    return f"backbone-{fingerprint_id({k: v for k, v in fingerprint.items() if k not in PIXEL_FIELDS})}"


def backbone_network(resolved: ResolvedBackbone, log=lambda message: None):
    """The backbone as a :class:`~embedder.runtimes.base.Network` for the engine (built lazily)."""
    from .runtimes.base import Network

    def build():
        log(f"building {describe_architecture(resolved)}")
        return build_backbone(resolved)

    compute_dtype = resolved.fingerprint.get("compute_dtype")
    return Network(key=network_key(resolved.fingerprint), build=build, describe=dict(resolved.fingerprint),
                   mixed_precision=compute_dtype == COMPUTE_DTYPES["mixed"],
                   bfloat16=compute_dtype == COMPUTE_DTYPES["bf16"], portable=resolved)


def describe_architecture(resolved: ResolvedBackbone) -> str:
    spec, config = resolved.spec, resolved.config
    if spec is None:
        return f"model file {config.backbone}"
    alpha = f", alpha={config.alpha:g}" if spec.has_alpha and config.alpha is not None else ""
    return f"{spec.name}(include_top=False{alpha}) at {resolved.image_size}px"


def _load_model_file(keras, resolved: ResolvedBackbone):
    path = Path(resolved.config.backbone).expanduser()
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise BackboneError(f"cannot load model file {path}: {' '.join(str(exc).split())[:200]}") from None
    shape = tuple(model.inputs[0].shape) if model.inputs else ()
    if len(shape) != 4 or shape[-1] != 3:
        raise BackboneError(f"model file {path} must take images [batch, H, W, 3], its input is {shape}")
    height, width = shape[1], shape[2]
    size = resolved.config.image_size
    if height is not None and width is not None:
        if height != width:
            raise BackboneError(f"model file {path} takes {height}x{width} images; only square inputs are supported")
        if size is not None and size != height:
            raise UsageError(f"--image-size {size} does not match the model file's input size {height}")
        size = int(height)
    elif size is None:
        raise UsageError(f"model file {path} accepts any image size; pass --image-size")
    return model, size


def _select_layer(keras, base, layer: str | None):
    if not layer:
        return base
    names = [l.name for l in base.layers]
    if layer not in names:
        close = difflib.get_close_matches(layer, names, n=3, cutoff=0.4)
        hint = f" (close: {', '.join(close)})" if close else f" (it has {len(names)} layers, e.g. {', '.join(names[-3:])})"
        raise UsageError(f"--layer {layer!r} is not a layer of the backbone{hint}")
    return keras.Model(base.inputs, base.get_layer(layer).output, name=f"{base.name}_to_{layer}")


def _pool(keras, x, pooling: str):
    rank = len(x.shape)
    if rank == 2:
        return x
    if rank != 4:
        raise BackboneError(f"backbone output has shape {tuple(x.shape)}; expected [batch, H, W, C] or [batch, D]")
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="pool_avg")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="pool_max")(x)
    return keras.layers.Flatten(name="pool_flatten")(x)


_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def preprocessing_layers(keras, mode: str):
    """Each family's ``preprocess_input``, as standard (serialisable) Keras layers.

    'tf': x/127.5 - 1.  'torch': (x/255 - mean)/std.  'caffe': RGB->BGR, minus the BGR mean
    (a fixed 1x1 convolution: a channel permutation plus a bias, exact in float32).
    'none' / 'model': the network does its own.
    """
    import numpy as np

    name = f"{PREPROCESS_LAYER_PREFIX}_{mode}"
    seq = keras.Sequential(name=name)
    if mode == "tf":
        seq.add(keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=f"{name}_scale"))
    elif mode == "torch":
        seq.add(keras.layers.Rescaling(1.0 / 255.0, name=f"{name}_scale"))
        seq.add(keras.layers.Normalization(
            mean=list(_IMAGENET_MEAN_RGB), variance=[s * s for s in _IMAGENET_STD_RGB], name=f"{name}_norm"))
    elif mode == "caffe":
        permute = np.zeros((1, 1, 3, 3), dtype="float32")
        for out_channel, in_channel in enumerate((2, 1, 0)):
            permute[0, 0, in_channel, out_channel] = 1.0
        conv = keras.layers.Conv2D(3, 1, name=f"{name}_bgr", trainable=False)
        conv.build((None, None, None, 3))
        conv.set_weights([permute, -np.asarray(_CAFFE_MEAN_BGR, dtype="float32")])
        seq.add(conv)
    elif mode not in ("none", "model"):
        raise ValueError(f"unknown preprocessing mode {mode!r}")
    if not seq.layers:
        seq.add(keras.layers.Identity(name=f"{name}_identity"))
    seq.trainable = False
    return seq


def registry_table() -> list[dict]:
    """Rows for ``headstart embed backbones``."""
    return [
        {
            "name": spec.name,
            "native_size": spec.native_size,
            "min_size": spec.min_size,
            "preprocessing": spec.preprocessing,
            "alpha": spec.has_alpha,
        }
        for spec in REGISTRY.values()
    ]
