"""The TensorFlow runtime: the Keras network as one compiled ``tf.function``.

A ``tf.function`` with a fixed signature, not ``model.predict`` in a loop (10-40% slower,
DESIGN.md). It is the runtime of GPUs (mixed precision, XLA, several devices through
``tf.distribute.MirroredStrategy``) and the fallback for networks LiteRT cannot convert.
"""

from __future__ import annotations

from typing import Callable

from ..tf_runtime import gpus_visible, import_tf
from .base import Forward, Network, Runtime, RuntimeOptions


def compiled_forward(model, image_size: int, jit_compile: bool = False, strategy=None):
    """``model(x, training=False)`` as one traced graph for any batch size.

    With a ``tf.distribute`` strategy, each replica takes a contiguous slice of the batch
    and the results are gathered back in order (so a global batch is the per-device batch
    times the number of devices). ``jit_compile`` turns on XLA (measured slower on CPUs).
    """
    tf = import_tf()
    signature = [tf.TensorSpec([None, image_size, image_size, 3], tf.float32)]

    if strategy is None:
        @tf.function(input_signature=signature, reduce_retracing=True, jit_compile=jit_compile)
        def forward(images):
            return model(images, training=False)
    else:
        replicas = strategy.num_replicas_in_sync

        @tf.function(jit_compile=jit_compile)
        def replica_step(images, share):
            start = tf.distribute.get_replica_context().replica_id_in_sync_group * share
            return model(images[start:start + share], training=False)

        @tf.function(input_signature=signature, reduce_retracing=True)
        def forward(images):
            # Pad to a multiple of the replica count: a replica given no rows at all (a last
            # batch smaller than the device count) makes TensorFlow's convolutions fail.
            rows = tf.shape(images)[0]
            share = (rows + replicas - 1) // replicas
            padded = tf.pad(images, [[0, share * replicas - rows], [0, 0], [0, 0], [0, 0]])
            return strategy.gather(strategy.run(replica_step, args=(padded, share)), axis=0)[:rows]

    forward.get_concrete_function()  # trace now (set-up time), not inside the first batch
    return forward


class TensorFlowRuntime(Runtime):
    name = "tf"

    def load(self, network: Network, model: Callable[[], object], options: RuntimeOptions,
             log: Callable[[str], None], strategy=None, device_names: list[str] | None = None) -> Forward:
        keras_model = model()
        size = int(keras_model.inputs[0].shape[1])
        use_jit = gpus_visible() if options.jit is None else bool(options.jit)
        fn = compiled_forward(keras_model, size, jit_compile=use_jit, strategy=strategy)
        names = device_names or []
        reason = f"{len(names)} devices: {', '.join(names)}" if strategy is not None else ""
        return Forward(fn, "tf", size, reason, replicas=max(1, len(names)), jit=use_jit)
