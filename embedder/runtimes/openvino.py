"""The OpenVINO runtime: float32 like LiteRT's, and bfloat16 on CPUs that compute in it.

On 2 cores of an AVX512_BF16 CPU (issue 16), MobileNetV2 ran at 300 images/s under LiteRT,
284 under OpenVINO float32, and 598 under OpenVINO bfloat16, with features at cosine 0.997
to float32 on real photos. So OpenVINO is the runtime of ``--precision bf16``; for float32
``--runtime auto`` keeps what measured faster (:mod:`embedder.runtimes`).

The Keras network is converted once per key (fingerprint) and library versions to an
OpenVINO model (IR: ``model.xml`` + ``model.bin``, kept as one uncompressed zip in the
per-user store, verified by SHA-256 on every load, :mod:`embedder.runtimes.store`). Every
conversion is checked against TensorFlow on a probe batch in float32 (1e-4 relative, like
LiteRT), and a bfloat16 compile against that float32 one (cosine), before it is kept.

Precision is chosen when the model is compiled, and OpenVINO silently computes in float32
when asked for bfloat16 on a CPU without it, and in bfloat16 by default on one with it. So
the precision is always set explicitly, and what the compiled model actually runs its
convolutions and matrix products in is read back and must be the precision asked for: a
bfloat16 fingerprint never gets float32 rows, nor a float32 one bfloat16 rows.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..devices import available_cores
from ..errors import BackboneError, UsageError
from .base import ChunkPool, Forward, Network, Runtime, RuntimeOptions, relative_max_difference
from .litert import ConversionError
from .store import ConvertedStore

PARITY_TOLERANCE = 1e-4  # float32: max |openvino - tf| relative to max |tf| on the probe batch
# bfloat16 keeps 8 bits of mantissa: on real photos MobileNetV2's features had cosine 0.9967 on
# average (min 0.989) to float32 (issue 16); on the probe's noise pixels a Keras bfloat16 emulation
# gave 0.999. Below this, the compile is broken, not merely rounded.
BF16_MIN_COSINE = 0.98
_PROBE_BATCH = 2
DEFAULT_CHUNK = 2  # images per infer request (see OpenVINOForward)
PRECISIONS = {"float32": "f32", "bfloat16": "bf16"}  # fingerprint compute_dtype -> OpenVINO's name
_COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "MatMul", "FullyConnected", "Deconvolution")
INSTALL_HINT = "pip install 'headstart[openvino]'"


class OpenVINOConversionError(ConversionError):
    """The backbone does not convert to OpenVINO, or the conversion's numbers differ."""


class PrecisionError(BackboneError):
    """The compiled model does not compute in the precision the fingerprint names."""


def installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


@functools.lru_cache(maxsize=1)
def core():
    """One OpenVINO Core per process (it loads the CPU plugin once)."""
    import openvino

    return openvino.Core()


# -- the CPU's bfloat16 -----------------------------------------------------------------

_NATIVE_BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512_BF16"}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.lru_cache(maxsize=1)
def cpu_bfloat16() -> str | None:
    """What lets this CPU compute in bfloat16 ('AMX-BF16', 'AVX512_BF16'), or None.

    Both must agree: OpenVINO lists BF16 among the CPU's optimization capabilities, and
    (on Linux) the CPU has the native instructions, not an emulation of them.
    """
    if not installed():
        return None
    try:
        capabilities = set(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # no CPU plugin
        return None
    if "BF16" not in capabilities:
        return None
    flags = _cpu_flags()
    if not flags:  # no /proc/cpuinfo (not Linux): OpenVINO's word
        return "BF16 (per OpenVINO)"
    found = [name for flag, name in _NATIVE_BF16_FLAGS.items() if flag in flags]
    return found[0] if found else None


def cpu_name() -> str:
    with contextlib.suppress(Exception):
        return str(core().get_property("CPU", "FULL_DEVICE_NAME"))
    return "this CPU"


def bf16_refusal() -> str | None:
    """Why ``--precision bf16`` cannot run here (None: it can)."""
    if not installed():
        return f"--precision bf16 runs on OpenVINO, which is not installed: {INSTALL_HINT}"
    if cpu_bfloat16() is None:
        return (f"--precision bf16 needs a CPU with AVX512_BF16 or AMX; {cpu_name()} has neither "
                f"(use --precision float32)")
    return None


# -- conversion and the stored form -----------------------------------------------------

def convert(model):
    """The Keras model as an OpenVINO model (float32 weights; precision is chosen at compile)."""
    import openvino
    from ..tf_runtime import quiet_stderr

    try:
        with warnings.catch_warnings(), quiet_stderr(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # Keras: "the structure of `inputs` doesn't match"
            return openvino.convert_model(model)
    except Exception as exc:
        raise OpenVINOConversionError(
            f"{model.name} does not convert to OpenVINO: {' '.join(str(exc).split())[:200]}") from None


def pack(ov_model) -> bytes:
    """One file for the store: an uncompressed zip of the IR (``unzip`` gives model.xml/.bin)."""
    import openvino

    with tempfile.TemporaryDirectory(prefix="headstart-ov-") as folder:
        xml = Path(folder) / "model.xml"
        openvino.save_model(ov_model, xml, compress_to_fp16=False)  # the default halves the weights
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            archive.write(xml, "model.xml")
            archive.write(xml.with_suffix(".bin"), "model.bin")
    return buffer.getvalue()


def unpack(data: bytes):
    import openvino

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        xml, weights = archive.read("model.xml"), archive.read("model.bin")
    return core().read_model(model=xml, weights=openvino.Tensor(np.frombuffer(weights, dtype=np.uint8).copy()))


def store() -> ConvertedStore:
    # The IR depends on the converter (OpenVINO), TensorFlow and the Keras that built the model.
    return ConvertedStore("openvino", ".ov.zip", ("openvino", "tensorflow", "tensorflow-cpu", "keras"))


# -- running ----------------------------------------------------------------------------

def compute_precisions(compiled) -> set[str]:
    """The precisions the compiled model runs its convolutions and matrix products in."""
    found = set()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) in _COMPUTE_LAYERS:
            found.add(info["runtimePrecision"].astype(str))
    return found


class OpenVINOForward:
    """``forward(images [B, S, S, 3] float32) -> np.ndarray [B, D]`` on the CPU.

    Compiled with OpenVINO's throughput hint (one single-threaded stream per core on small
    machines, fewer multi-threaded ones on big ones), with one infer request per stream. A
    batch is cut into chunks of at most ``chunk`` images that the requests take in turn
    (the same scheme as LiteRT's interpreter pool); results come back in order. ``threads``
    asks for one stream of that many threads instead. Safe to call from several threads.
    """

    def __init__(self, ov_model, compute_dtype: str = "float32", threads: int | None = None,
                 chunk: int = DEFAULT_CHUNK):
        if compute_dtype not in PRECISIONS:
            raise UsageError(f"OpenVINO computes in {' or '.join(PRECISIONS)}, not {compute_dtype}")
        self.compute_dtype = compute_dtype
        cores = available_cores()
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[compute_dtype]}
        if threads:
            config.update(PERFORMANCE_HINT="LATENCY", NUM_STREAMS=1, INFERENCE_NUM_THREADS=int(threads))
        else:
            config.update(PERFORMANCE_HINT="THROUGHPUT", INFERENCE_NUM_THREADS=cores)
        started = time.perf_counter()
        try:
            compiled = core().compile_model(ov_model, "CPU", config)
        except Exception as exc:
            raise OpenVINOConversionError(
                f"OpenVINO cannot compile the backbone: {' '.join(str(exc).split())[:200]}") from None
        self.compile_s = time.perf_counter() - started
        ran_in = compute_precisions(compiled)
        wanted = PRECISIONS[compute_dtype]
        if ran_in != {wanted}:
            raise PrecisionError(f"OpenVINO was asked to compute in {compute_dtype} but compiled the backbone's "
                                 f"layers in {', '.join(sorted(ran_in)) or 'nothing known'}; refusing rows that "
                                 f"would not match the fingerprint")
        self.streams = int(compiled.get_property("NUM_STREAMS"))
        self.threads = max(1, int(compiled.get_property("INFERENCE_NUM_THREADS")) // max(1, self.streams))
        requests = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.chunk = max(1, chunk)
        shape = ov_model.inputs[0].get_partial_shape()
        self.image_size = int(shape[1].get_length())
        self._compiled = compiled
        self.requests = requests
        self._pool = ChunkPool([compiled.create_infer_request() for _ in range(requests)], _infer, self.chunk,
                               "openvino")

    @property
    def layout(self) -> str:
        """E.g. 'float32, 2 streams x 1 thread', as `embed run` reports its runtime choice."""
        streams = f"{self.streams} stream{'s' if self.streams > 1 else ''}"
        return f"{self.compute_dtype}, {streams} x {self.threads} thread{'s' if self.threads > 1 else ''}"

    def __call__(self, images) -> np.ndarray:
        return self._pool(images)


def _infer(request, x: np.ndarray) -> np.ndarray:
    request.infer({0: x})  # releases the GIL: requests run side by side
    return request.get_output_tensor(0).data.copy()


def _probe(image_size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (_PROBE_BATCH, image_size, image_size, 3)).astype(np.float32)


def check_parity(model, forward: OpenVINOForward, seed: int = 0) -> float:
    """Relative max difference between TensorFlow and OpenVINO on a probe batch of pixels."""
    probe = _probe(forward.image_size, seed)
    reference = np.asarray(model(probe, training=False), dtype=np.float64)
    got = np.asarray(forward(probe), dtype=np.float64)
    if got.shape != reference.shape:
        raise OpenVINOConversionError(f"OpenVINO output shape {got.shape} differs from TensorFlow's {reference.shape}")
    return relative_max_difference(reference, got)


def cosine_agreement(reference: Callable, forward: Callable, image_size: int, seed: int = 0) -> float:
    """The lowest cosine similarity, over a probe batch, of ``forward``'s features to ``reference``'s."""
    probe = _probe(image_size, seed)
    a = np.asarray(reference(probe), dtype=np.float64).reshape(len(probe), -1)
    b = np.asarray(forward(probe), dtype=np.float64).reshape(len(probe), -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    both_zero = ~a.any(axis=1) & ~b.any(axis=1)
    cosine = np.where(both_zero, 1.0, cosine)
    return float(np.nan_to_num(cosine, nan=-1.0).min())


class OpenVINORuntime(Runtime):
    name = "openvino"

    def refuses(self, network: Network, options: RuntimeOptions, tf_only: list[str]) -> str | None:
        if tf_only:
            return f"--runtime openvino cannot run {tf_only[0]}; use --runtime tf (or auto)"
        if network.bfloat16:
            return bf16_refusal()
        if not installed():
            return f"OpenVINO is not installed: {INSTALL_HINT} (or use --runtime litert or tf)"
        return None

    def load(self, network: Network, model: Callable[[], object], options: RuntimeOptions,
             log: Callable[[str], None]) -> Forward:
        """From the store (hash-verified), or converted now, checked against TensorFlow, and kept."""
        compute_dtype = "bfloat16" if network.bfloat16 else "float32"
        kept = store()
        data = kept.load(network.key, log)
        forward = None
        if data is not None:
            try:
                forward = OpenVINOForward(unpack(data), compute_dtype, options.threads)
            except PrecisionError:
                raise
            except Exception:  # a verified file OpenVINO refuses: an upgrade? convert again
                kept.remove(kept.path_for(network.key))
        if forward is None:
            forward = self._convert(network, model(), compute_dtype, options, kept, log)
        cpu = f" ({cpu_bfloat16()})" if network.bfloat16 else ""
        layout = forward.layout.replace(compute_dtype, compute_dtype + cpu, 1)
        return Forward(forward, "openvino", forward.image_size, layout)

    @staticmethod
    def _convert(network: Network, keras_model, compute_dtype: str, options: RuntimeOptions,
                 kept: ConvertedStore, log: Callable[[str], None]) -> OpenVINOForward:
        log("converting the backbone to OpenVINO (once per configuration on this machine)")
        ov_model = convert(keras_model)
        reference = OpenVINOForward(ov_model, "float32", options.threads)
        difference = check_parity(keras_model, reference)
        if not difference <= PARITY_TOLERANCE:
            raise OpenVINOConversionError(f"OpenVINO features differ from TensorFlow's by {difference:.2g} "
                                          f"(relative; allowed {PARITY_TOLERANCE:g})")
        record = {"for": network.describe, "parity_relative_difference": difference}
        forward = reference
        if compute_dtype != "float32":
            forward = OpenVINOForward(ov_model, compute_dtype, options.threads)
            agreement = cosine_agreement(reference, forward, forward.image_size)
            if not agreement >= BF16_MIN_COSINE:
                raise OpenVINOConversionError(
                    f"OpenVINO's {compute_dtype} features agree with float32 only to cosine {agreement:.4f} "
                    f"(required {BF16_MIN_COSINE}); use --precision float32")
            record[f"{compute_dtype}_min_cosine_to_float32"] = agreement
        kept.save(network.key, pack(ov_model), record)
        return forward
