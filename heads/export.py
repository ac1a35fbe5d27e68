"""`headstart export`: one self-contained model on raw RGB pixels, plus labels.txt.

The exported model takes decoded images of **any size** (``[batch, H, W, 3]`` RGB pixels in
[0, 255]; float32, or uint8 where the format allows a second signature) and returns class
probabilities. The resize is inside, the same rule ``embed run`` and ``predict`` use
(:mod:`embedder.decode`), and so is the preprocessing (standard Keras layers): nothing from
headstart is needed to use it, and no resize rule of the caller's can flip a class (resizing
with ``keras.utils.load_img(target_size=...)`` first once did). Pass upright pixels
(``PIL.ImageOps.exif_transpose``), as ``predict`` sees them.

Formats:
  keras       OUT/model.keras       keras.models.load_model(...) (float32 input; uint8 arrays are cast)
  savedmodel  OUT/saved_model/      signatures ``serve`` (float32) and ``serve_uint8``
  tflite      OUT/model.tflite      float32 input [1, H, W, 3] (resize_tensor_input to the image's size);
                                    built-in ops only, float32, no quantisation
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from headstart.embedder.atomic import write_text_atomic
from headstart.embedder.cache import library_versions
from headstart.embedder.errors import UsageError

from .full_model import any_size_model, pixel_recipe

FORMATS = ("keras", "savedmodel", "tflite")


def export_run(run, fmt: str, out: Path) -> dict:
    """Write the run's classifier in ``fmt`` under the folder ``out``; return what was written."""
    if fmt not in FORMATS:
        raise UsageError(f"unsupported export format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder to export into")
    model, fixed, size = any_size_model(run)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "keras":
        artifact = out / "model.keras"
        model.save(artifact)
    elif fmt == "savedmodel":
        artifact = out / "saved_model"
        _write_saved_model(model, artifact)
    else:
        artifact = out / "model.tflite"
        artifact.write_bytes(_tflite(fixed, size, pixel_recipe(run.meta)))
    write_text_atomic(out / "labels.txt", "".join(f"{c}\n" for c in run.classes))
    info = {
        "format": fmt,
        "artifact": str(artifact),
        "input": {"shape": [1 if fmt == "tflite" else None, None, None, 3],
                  "values": "upright RGB pixels in [0, 255], any size",
                  "resize": f"inside the model to {size}x{size} ({pixel_recipe(run.meta).fingerprint['resize']})",
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


def _write_saved_model(model, target: Path) -> None:
    from headstart.embedder.tf_runtime import import_keras, import_tf

    tf, keras = import_tf(), import_keras()
    if target.exists():
        shutil.rmtree(target)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve", lambda pixels: model(pixels, training=False),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="pixels")])
    archive.add_endpoint(
        "serve_uint8", lambda pixels: model(tf.cast(pixels, tf.float32), training=False),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="pixels")])
    archive.write_out(str(target), verbose=False)


def _tflite(model, size: int, recipe) -> bytes:
    """The classifier behind the rule's resize written with TFLite's built-in ops only."""
    from headstart.embedder.decode import tf_resize_builtin_ops
    from headstart.embedder.runtimes.litert import ConversionError
    from headstart.embedder.tf_runtime import import_tf, quiet_stderr

    tf = import_tf()

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32, name="pixels")])
    def classify(pixels):
        return model(tf_resize_builtin_ops(tf, pixels, size, recipe), training=False)

    import contextlib
    import io

    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    try:
        # Weights become constants (a captured Keras variable would be an uninitialised
        # READ_VARIABLE in the flatbuffer: NaN out).
        frozen = convert_variables_to_constants_v2(classify.get_concrete_function())
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
        with quiet_stderr(), contextlib.redirect_stdout(io.StringIO()):
            return converter.convert()
    except Exception as exc:
        raise ConversionError(f"the model does not convert to TFLite: {' '.join(str(exc).split())[:200]}") from None
