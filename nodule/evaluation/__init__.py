"""LUNA16 FROC/CPM evaluation, cross-validation and reports."""
