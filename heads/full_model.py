"""From a run to a model that takes raw images: backbone (rebuilt from the fingerprint) + head.

A head run stores only the head; its backbone is rebuilt exactly from the fingerprint the
head was trained on (architecture, weights identity, input size, pooling, preprocessing).
The weights file or model file is found where the embedding job recorded it, and its hash
must still match. A fine-tuned run stores the whole network and needs none of this.
"""

from __future__ import annotations

from pathlib import Path

from headstart.embedder.backbones import ResolvedBackbone, build_backbone, config_from_fingerprint
from headstart.embedder.decode import PixelRecipe, recipe_for
from headstart.embedder.errors import UsageError

FULL_MODEL_FILE = "model.keras"


def backbone_sources(meta: dict) -> tuple[str | None, str | None]:
    """Where the backbone's model/weights files were: recorded in the run, else in its cache."""
    sources = meta.get("backbone_sources") or {}
    backbone, weights = sources.get("backbone"), sources.get("weights")
    if backbone is None and weights is None:
        from headstart.embedder.cache import CacheLocation, open_cache

        recorded = (meta.get("cache") or {}).get("path")
        if recorded and (cache := CacheLocation.of(recorded)).where.is_file():
            attrs = open_cache(cache).attrs
            backbone, weights = attrs.get("backbone_source"), attrs.get("weights_source")
    return backbone, weights


def resolve_backbone(meta: dict) -> ResolvedBackbone:
    backbone, weights = backbone_sources(meta)
    return config_from_fingerprint(meta["fingerprint"], backbone, weights)


def is_finetuned(meta: dict) -> bool:
    return meta.get("kind") == "finetuned"


def require_keras_head(run) -> None:
    if run.head_type != "dense" and not is_finetuned(run.meta):
        raise UsageError(
            f"run {run.path} has a {run.head_type} head (scikit-learn), which cannot become part of a Keras "
            f"network; train a dense head first (`headstart head train --head dense`)"
        )


def compose(backbone, head, name: str = "headstart_classifier"):
    """pixels [B, S, S, 3] in [0, 255] -> class probabilities [B, C]."""
    from headstart.embedder.tf_runtime import import_keras

    keras = import_keras()
    size = int(backbone.inputs[0].shape[1])
    pixels = keras.Input((size, size, 3), dtype="float32", name="pixels")
    features = backbone(pixels)
    probabilities = head(features)
    return keras.Model(pixels, probabilities, name=name)


def pixel_recipe(meta: dict) -> PixelRecipe:
    """How the run's images must be made into pixels: the rule its cache was embedded with."""
    return recipe_for(meta["fingerprint"])


def finetuned_network(run):
    """A fine-tuned run's whole network (pixels -> probabilities) for the engine, named by its
    file's hash so a converted copy is never reused for another model."""
    from headstart.embedder.hashing import content_key
    from headstart.embedder.runtimes.base import Network

    model_file = Path(run.path) / run.meta.get("model_file", FULL_MODEL_FILE)
    digest = run.meta.get("model_sha256") or content_key(model_file)
    return Network(key=f"model-{str(digest)[:16]}", build=lambda: load_full_model(run)[0],
                   describe={"run": str(run.path)},
                   mixed_precision=run.fingerprint.get("compute_dtype") == "mixed_float16")


def load_full_model(run):
    """The run's classifier on ``S x S`` pixels, and ``S``."""
    from headstart.embedder.tf_runtime import import_keras

    require_keras_head(run)
    keras = import_keras()
    if is_finetuned(run.meta):
        path = Path(run.path) / FULL_MODEL_FILE
        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as exc:
            raise UsageError(f"cannot load the fine-tuned model {path}: {' '.join(str(exc).split())[:200]}") from None
        return model, int(model.inputs[0].shape[1])
    resolved = resolve_backbone(run.meta)
    backbone = build_backbone(resolved)
    return compose(backbone, run.keras_head()), int(backbone.inputs[0].shape[1])


def any_size_model(run):
    """The run's classifier on images of any size: the run's resize rule as the first layer
    (what `export` writes). Pass upright RGB pixels in [0, 255], fully decoded."""
    from headstart.embedder.decode import keras_resize_layer
    from headstart.embedder.tf_runtime import import_keras

    keras = import_keras()
    model, size = load_full_model(run)
    pixels = keras.Input((None, None, 3), dtype="float32", name="pixels")
    resized = keras_resize_layer(keras, pixel_recipe(run.meta), size)(pixels)
    # training=False is recorded in the graph: a caller's model(x) must never run dropout (it did without it)
    return keras.Model(pixels, model(resized, training=False), name="headstart_classifier_any_size"), model, size
