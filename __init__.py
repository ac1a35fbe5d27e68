"""headstart: transfer learning on images. Embed once into an HDF5 cache, train heads in seconds.

A small API for notebooks; the command line (``headstart --help``) does the same things::

    import headstart

    report = headstart.embed("photos/", backbone="MobileNetV2", cache="cache/photos.h5")
    data = headstart.load_cache("cache/photos.h5")          # data.X, data.y, data.split, data.classes
    run = headstart.train_head("cache/photos.h5", head="logreg", out="runs/logreg")
    model = headstart.load_run("runs/logreg")
    model.predict(["new/owl.jpg"])                           # [{path, label, probability, top_k}]

The installed package maps the repository's folders (``embedder/``, ``heads/``, ``cli.py``)
into this one ``headstart`` package, so nothing generic (``cli``, ``heads``) lands at the
top level of a user's environment. Importing it is cheap: TensorFlow loads only when a
function that runs a model is called.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["embed", "load_cache", "train_head", "load_run", "__version__"]


def embed(images, backbone: str = "MobileNetV2", weights: str = "imagenet", cache=None, *, progress: bool = True,
          **options):
    """Embed every image under ``images`` into a cache (what ``headstart embed run`` does).

    ``options`` are :class:`headstart.embedder.backbones.BackboneConfig` fields (``image_size``,
    ``pooling``, ``layer``, ``alpha``, ``seed``, ``precision``) and
    :class:`headstart.embedder.job.EmbedOptions` fields (``cache_dir``, ``dtype``,
    ``batch_size``, ``runtime``, ``manifest``, ...). Returns the run's report
    (``report.cache_path``, ``report.embedded``, ``report.skipped``, ...).
    """
    from dataclasses import fields

    from .embedder.backbones import BackboneConfig
    from .embedder.job import EmbedOptions, run_embedding

    config_names = {f.name for f in fields(BackboneConfig)}
    option_names = {f.name for f in fields(EmbedOptions)}
    unknown = sorted(set(options) - config_names - option_names)
    if unknown:
        raise TypeError(f"embed() got unknown options: {', '.join(unknown)}")
    config = BackboneConfig(backbone=backbone, weights=weights,
                            **{k: v for k, v in options.items() if k in config_names})
    embed_options = EmbedOptions(cache=cache, progress=progress,
                                 **{k: v for k, v in options.items() if k in option_names})
    return run_embedding(images, config, embed_options)


def load_cache(path, val_fraction: float | None = None, seed: int | None = None):
    """A cache as arrays: ``X`` [N, D] float32 features (one row per distinct image), ``y`` [N]
    class indices (-1 unlabelled), ``split`` [N] ('train'/'val'/'test', exactly as ``head train``
    splits them with the same ``val_fraction`` and ``seed``), ``classes``, ``paths`` and ``keys``."""
    from .embedder import defaults
    from .heads.data import load_labelled

    return _CacheArrays(load_labelled(path, val_fraction=defaults.VAL_FRACTION if val_fraction is None else val_fraction,
                                      seed=defaults.SPLIT_SEED if seed is None else seed))


def train_head(cache, head: str = "dense", out=None, *, runs_dir=None, **params):
    """Train a head on a cache (what ``headstart head train`` does); returns the loaded run.

    ``params`` are the head kind's hyper-parameters (``epochs``, ``hidden``, ``C``, ``k``, ...,
    as the command's options, with underscores)."""
    from .embedder import defaults
    from .heads.params import make_params
    from .heads.train import train_head as _train

    report = _train(make_params(head, **params), cache=cache, out=out, runs_dir=runs_dir or defaults.RUNS_DIR)
    return load_run(report.run)


def load_run(path):
    """A trained run (head or fine-tuned) that predicts on image files or decoded arrays."""
    from .heads.runs import load_run as _load

    return _Predictor(_load(path))


class _CacheArrays:
    def __init__(self, data):
        self._data = data
        self.X, self.y, self.split = data.features, data.labels, data.splits
        self.classes, self.paths, self.keys = list(data.classes), data.paths, data.keys
        self.fingerprint = dict(data.fingerprint)

    def __repr__(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self._data.counts().items() if v)
        return f"<cache {self._data.cache_path}: {len(self.X)} rows x {self.X.shape[1]}, {len(self.classes)} classes; {counts}>"


class _Predictor:
    def __init__(self, run):
        self.run = run
        self.classes = list(run.classes)
        self.metrics = dict(run.meta.get("metrics") or {})

    def __repr__(self) -> str:
        return f"<run {self.run.path}: {self.run.kind}, classes {self.classes}>"

    def predict(self, images, top_k: int = 3) -> list[dict]:
        """``images``: image file paths, or decoded upright RGB arrays ``[H, W, 3]`` (any size;
        resized as ``embed run`` does). One dict per image: path (or index), label,
        probability, top_k."""
        from .heads.inference import PredictOptions, predict_arrays, predict_images

        images = list(images)
        options = PredictOptions(top_k=top_k, progress=False)
        if images and not isinstance(images[0], (str, bytes)) and hasattr(images[0], "shape"):
            return predict_arrays(images, self.run, options)
        report = predict_images([str(p) for p in images], self.run, options)
        if report.skipped:
            first = report.skipped[0]
            raise ValueError(f"{len(report.skipped)} images could not be used (e.g. {first['path']}: {first['reason']})")
        return report.predictions
