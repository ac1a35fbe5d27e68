"""`headstart export`: one self-contained model on raw RGB pixels, plus labels.txt.

The exported model takes ``[batch, S, S, 3]`` pixels in [0, 255] (float32; uint8 too where
the format allows a second signature) and returns class probabilities. Preprocessing is
inside (standard Keras layers), so nothing from headstart is needed to use it.

Formats:
  keras       OUT/model.keras       keras.models.load_model(...) (float32 input; uint8 arrays are cast)
  savedmodel  OUT/saved_model/      signatures ``serve`` (float32) and ``serve_uint8``
  tflite      OUT/model.tflite      float32 input [1, S, S, 3]; float32 ops, no quantisation
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from headstart.embedder.atomic import write_text_atomic
from headstart.embedder.cache import library_versions
from headstart.embedder.errors import UsageError

from .full_model import load_full_model

FORMATS = ("keras", "savedmodel", "tflite")


def export_run(run, fmt: str, out: Path) -> dict:
    """Write the run's classifier in ``fmt`` under the folder ``out``; return what was written."""
    if fmt not in FORMATS:
        raise UsageError(f"unsupported export format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder to export into")
    model, size = load_full_model(run)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "keras":
        artifact = out / "model.keras"
        model.save(artifact)
    elif fmt == "savedmodel":
        artifact = out / "saved_model"
        _write_saved_model(model, size, artifact)
    else:
        artifact = out / "model.tflite"
        from headstart.embedder.litert import convert

        artifact.write_bytes(convert(model))
    write_text_atomic(out / "labels.txt", "".join(f"{c}\n" for c in run.classes))
    info = {
        "format": fmt,
        "artifact": str(artifact),
        "input": {"shape": [1 if fmt == "tflite" else None, size, size, 3], "values": "RGB pixels in [0, 255]",
                  "dtype": "float32" if fmt != "savedmodel" else "float32 (serve) or uint8 (serve_uint8)"},
        "output": {"shape": [None, len(run.classes)], "values": "class probabilities, in labels.txt order"},
        "classes": list(run.classes),
        "run": str(run.path),
        "run_kind": run.meta.get("kind", "head"),
        "fingerprint": run.fingerprint,
        "versions": library_versions(),
    }
    write_text_atomic(out / "export.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def _write_saved_model(model, size: int, target: Path) -> None:
    from headstart.embedder.tf_runtime import import_keras, import_tf

    tf, keras = import_tf(), import_keras()
    if target.exists():
        shutil.rmtree(target)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve", lambda pixels: model(pixels, training=False),
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")])
    archive.add_endpoint(
        "serve_uint8", lambda pixels: model(tf.cast(pixels, tf.float32), training=False),
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="pixels")])
    archive.write_out(str(target), verbose=False)
