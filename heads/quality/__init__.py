"""Data quality from a cache: ``headstart inspect``.

Everything here works on the cached features alone (no backbone, no images):

* :mod:`.inventory` resolves the cache's file table per row (label, conflicts, the split
  ``head train`` will use) and loads the features as unit vectors;
* :mod:`.similarity` finds every pair of rows above a cosine threshold, exactly, without an
  ``N x N`` matrix (a PCA bound prunes, full-dimension products verify);
* :mod:`.threshold` calibrates that threshold for ``duplicates`` on each cache's own
  nearest-neighbour distances;
* :mod:`.duplicates`, :mod:`.label_errors`, :mod:`.outliers` and :mod:`.projection` are the
  four reports; :mod:`.output` writes their CSV/PNG files crash-safely.

The dependency direction is the project's: this package imports :mod:`embedder` and
:mod:`heads.splits`, nothing imports it but the CLI.
"""
