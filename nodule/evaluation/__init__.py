"""LUNA16 FROC/CPM evaluation, cross-validation and reports."""

from nodule.evaluation.froc import FrocResult, evaluate_froc

__all__ = ["FrocResult", "evaluate_froc"]
