"""Head kinds (dense, logreg, svm, knn, ncm): one protocol, one table; see :mod:`.base`."""

from .base import KINDS, FitReport, Head, ModelFileError, Option, get_kind, kind_names, make_head, option_table

__all__ = ["KINDS", "FitReport", "Head", "ModelFileError", "Option", "get_kind", "kind_names", "make_head",
           "option_table"]
