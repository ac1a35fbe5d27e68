"""Embedding stage: images -> frozen backbone -> crash-safe HDF5 cache.

Importing this package must stay cheap (no TensorFlow): the CLI imports it to answer
``--help`` and usage errors in well under a second. Modules that need TensorFlow import
it through :mod:`embedder.tf_runtime` inside the functions that use it.
"""

__version__ = "0.1.0"
