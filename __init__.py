"""headstart: transfer learning on images. Embed once into an HDF5 cache, train heads in seconds.

The installed package maps the repository's folders (``embedder/``, ``heads/``, ``cli.py``)
into one ``headstart`` package, so nothing generic (``cli``, ``heads``) lands at the top
level of a user's environment. Importing it is cheap: TensorFlow loads only when a
function that runs a model is called.
"""

__version__ = "0.1.0"
