"""Heads stage: small classifiers trained in seconds on a cache of frozen-backbone features.

Flow: :mod:`heads.data` loads a cache's features once (float32, one row per distinct image)
and decides each row's split (:mod:`heads.splits`); :mod:`heads.dense` (Keras) or
:mod:`heads.classic` (scikit-learn) fits a head on the training rows; :mod:`heads.evaluate`
measures it on the validation rows; :mod:`heads.runs` writes and reads the run folder.
:mod:`heads.train` and :mod:`heads.sweep` tie these together for the CLI.

Importing this package is cheap: TensorFlow and matplotlib load inside the functions that
need them, so ``headstart --help`` stays instant.
"""
