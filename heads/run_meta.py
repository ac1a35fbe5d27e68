"""head.json as a typed record: :class:`RunMeta` (with :class:`CacheRef` and :class:`SplitRecord`).

Every stage that writes a run (``head train``, ``head sweep``, ``finetune``) builds a
RunMeta and writes :meth:`RunMeta.to_json`; every stage that reads one gets it from
:func:`heads.runs.load_run` (``run.record``). Reading is tolerant: a field an older
headstart did not write takes its default, and fields this version does not know are kept
in ``extra`` and written back unchanged. The JSON keys are the contract (DESIGN.md, "Runs"):
renaming one needs a new ``format_version``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from .splits import SplitSpec

FORMAT_VERSION = 1
KINDS = ("head", "finetuned")


class RunMetaError(ValueError):
    """head.json holds a field of the wrong type (the run is damaged)."""


@dataclass
class CacheRef:
    """The cache a run was trained on, as recorded then (the file may have moved since)."""

    path: str | None = None
    images_root: str | None = None
    content_digest: str | None = None
    rows: int | None = None
    files: int | None = None

    @classmethod
    def from_json(cls, data: Any) -> "CacheRef":
        data = _mapping(data, "cache")
        return cls(path=_opt_str(data, "path"), images_root=_opt_str(data, "images_root"),
                   content_digest=_opt_str(data, "content_digest"), rows=_opt_int(data, "rows"),
                   files=_opt_int(data, "files"))

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class SplitRecord:
    """How the run's rows were split; enough for any stage to reproduce it (:attr:`spec`)."""

    val_fraction: float
    seed: int
    source: str = "hash"
    unit: str = "content key"
    counts: dict = field(default_factory=dict)
    per_class: dict = field(default_factory=dict)
    excluded: dict = field(default_factory=dict)
    train_views: dict | None = None

    @property
    def spec(self) -> SplitSpec:
        return SplitSpec(self.val_fraction, self.seed)

    @classmethod
    def from_json(cls, data: Any, params: Mapping[str, Any] | None = None) -> "SplitRecord":
        data = _mapping(data, "split")
        try:
            spec = SplitSpec.of_run(data, params)  # the one fallback rule
        except (TypeError, ValueError):
            raise RunMetaError("the split's val_fraction or seed is not a number") from None
        return cls(val_fraction=spec.val_fraction, seed=spec.seed, source=str(data.get("source", "hash")),
                   unit=str(data.get("unit", "content key")), counts=dict(data.get("counts") or {}),
                   per_class=dict(data.get("per_class") or {}), excluded=dict(data.get("excluded") or {}),
                   train_views=data.get("train_views"))

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out["train_views"] is None:
            del out["train_views"]
        return out


@dataclass
class RunMeta:
    """One run's head.json. Head runs fill the first block; fine-tuned runs the second too."""

    kind: str = "head"
    format_version: int = FORMAT_VERSION
    head_type: str = "?"
    finetuned_from: str | None = None
    classes: list[str] = field(default_factory=list)
    fingerprint: dict = field(default_factory=dict)
    feature_dim: int | None = None
    cache: CacheRef = field(default_factory=CacheRef)
    params: dict = field(default_factory=dict)
    split: SplitRecord | None = None
    metrics: dict = field(default_factory=dict)  # validation summary: accuracy, macro_f1, log_loss, n, ...
    best_epoch: int | None = None
    epochs_run: int | None = None
    stopped_early: bool | None = None
    fit_info: dict = field(default_factory=dict)
    train_seconds: float | None = None
    model_file: str | None = None
    model_sha256: str | None = None
    warnings: list[str] = field(default_factory=list)
    created: str = ""
    versions: dict = field(default_factory=dict)
    backbone_sources: dict | None = None
    # fine-tuned runs
    input_size: int | None = None
    unfrozen_layers: list[str] | None = None
    unfreeze_clamped: bool | None = None
    warm_start: dict | None = None
    head_metrics: dict | None = None  # the starting head's own recorded metrics (on cached features)
    start_metrics: dict | None = None  # the warm-started network on the validation images, before any step
    history: list[dict] | None = None
    seconds_per_epoch: float | None = None
    train_images: int | None = None
    val_images: int | None = None
    skipped: list[dict] | None = None
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as they were

    # ------------------------------------------------------------------ reading

    @classmethod
    def from_json(cls, data: Any) -> "RunMeta":
        """A record from head.json's object; missing fields take their defaults.

        Raises :class:`RunMetaError` for a field of the wrong type (e.g. ``classes`` not a list).
        """
        data = _mapping(data, "head.json")
        known = {f.name for f in fields(cls)} - {"extra"}
        params = _mapping(data.get("params"), "params")
        classes = data.get("classes", [])
        if not isinstance(classes, list):
            raise RunMetaError("'classes' is not a list")
        meta = cls(
            classes=[str(c) for c in classes],
            fingerprint=_mapping(data.get("fingerprint"), "fingerprint"),
            kind=str(data.get("kind", "head")),
            format_version=_opt_int(data, "format_version") or FORMAT_VERSION,
            head_type=str(data.get("head_type", "?")),
            feature_dim=_opt_int(data, "feature_dim"),
            cache=CacheRef.from_json(data.get("cache")),
            params=params,
            split=SplitRecord.from_json(data["split"], params) if data.get("split") is not None else None,
            metrics=_mapping(data.get("metrics"), "metrics"),
            best_epoch=_opt_int(data, "best_epoch"),
            epochs_run=_opt_int(data, "epochs_run"),
            stopped_early=data.get("stopped_early"),
            fit_info=_mapping(data.get("fit_info"), "fit_info"),
            train_seconds=_opt_float(data, "train_seconds"),
            model_file=_opt_str(data, "model_file"),
            model_sha256=_opt_str(data, "model_sha256"),
            warnings=[str(w) for w in data.get("warnings") or []],
            created=str(data.get("created") or ""),
            versions=_mapping(data.get("versions"), "versions"),
            backbone_sources=data.get("backbone_sources"),
            finetuned_from=_opt_str(data, "finetuned_from"),
            input_size=_opt_int(data, "input_size"),
            unfrozen_layers=data.get("unfrozen_layers"),
            unfreeze_clamped=data.get("unfreeze_clamped"),
            warm_start=data.get("warm_start"),
            head_metrics=data.get("head_metrics"),
            start_metrics=data.get("start_metrics"),
            history=data.get("history"),
            seconds_per_epoch=_opt_float(data, "seconds_per_epoch"),
            train_images=_opt_int(data, "train_images"),
            val_images=_opt_int(data, "val_images"),
            skipped=data.get("skipped"),
            extra={k: v for k, v in data.items() if k not in known},
        )
        return meta

    @property
    def split_spec(self) -> SplitSpec:
        """The (val_fraction, seed) that reproduce this run's split, by the one fallback rule
        (:meth:`heads.splits.SplitSpec.of_run`)."""
        if self.split is not None:
            return self.split.spec
        try:
            return SplitSpec.of_run(None, self.params)
        except (TypeError, ValueError):
            raise RunMetaError("the params' val_fraction or seed is not a number") from None

    @property
    def val_accuracy(self) -> float | None:
        value = self.metrics.get("accuracy", self.metrics.get("val_accuracy"))
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    @property
    def is_finetuned(self) -> bool:
        return self.kind == "finetuned"

    # ------------------------------------------------------------------ writing

    # Written even when null: readers of head runs have always found these keys.
    _ALWAYS = ("best_epoch", "epochs_run", "stopped_early")

    def to_json(self) -> dict[str, Any]:
        """head.json's object: the known fields (None ones left out, but for ``_ALWAYS``), then ``extra``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if isinstance(value, (CacheRef, SplitRecord)):
                value = value.to_json()
            if value is None and f.name not in self._ALWAYS:
                continue
            out[f.name] = value
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out


def _mapping(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RunMetaError(f"{what!r} is not a JSON object")
    return dict(value)


def _opt_str(data: Mapping, key: str) -> str | None:
    value = data.get(key)
    return None if value is None else str(value)


def _opt_int(data: Mapping, key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RunMetaError(f"{key!r} is not a whole number: {value!r}")
    try:
        return int(value)
    except ValueError:
        raise RunMetaError(f"{key!r} is not a whole number: {value!r}") from None


def _opt_float(data: Mapping, key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RunMetaError(f"{key!r} is not a number: {value!r}")
    try:
        return float(value)
    except ValueError:
        raise RunMetaError(f"{key!r} is not a number: {value!r}") from None
