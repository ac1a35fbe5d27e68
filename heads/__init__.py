"""Heads stage: small classifiers trained in seconds on a cache of frozen-backbone features.

Flow: :mod:`heads.data` loads a cache's features once (float32, one row per distinct image)
and decides each row's split (:func:`heads.data.split_for`, the one split function); a head
kind from the registry in :mod:`heads.kinds` (dense, logreg, svm, knn, ncm) fits on the
training rows; :mod:`heads.evaluate` measures it on the validation rows; :mod:`heads.runs`
writes and reads the run folder, whose head.json is :class:`heads.run_meta.RunMeta`.
:mod:`heads.train` and :mod:`heads.sweep` tie these together for the CLI;
:mod:`heads.choose` picks a cache or a run when none is named, never across data sets.

Importing this package is cheap: TensorFlow and matplotlib load inside the functions that
need them, so ``headstart --help`` stays instant.
"""
