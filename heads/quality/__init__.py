"""Data quality from a cache: ``headstart inspect``.

Everything here works on the cached features alone (no backbone; images are read only to
be shown, in the galleries):

* :mod:`.inventory` resolves the cache's file table per row (label, conflicts, the split
  ``head train`` will use) and loads the features as unit vectors;
* :mod:`.similarity` finds every pair of rows above a cosine threshold, exactly, without an
  ``N x N`` matrix (a PCA bound prunes, full-dimension products verify);
* :mod:`.threshold` calibrates that threshold for ``duplicates`` on each cache's own
  nearest-neighbour distances;
* :mod:`.duplicates`, :mod:`.label_errors`, :mod:`.outliers` and :mod:`.projection` are the
  four reports; :mod:`.output` writes their CSV/PNG files crash-safely, each CSV with its
  gallery beside it (:mod:`heads.gallery`: the images, from the cache's images root);
  :mod:`.samples` draws a per-class sample of the images onto one contact sheet.

The dependency direction is the project's: this package imports :mod:`embedder` and
:mod:`heads.splits`, nothing imports it but the CLI.
"""
