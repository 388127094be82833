"""Debiasing: grouping, resampling strategies, augmentation, Group DRO / JTT / DFR.

The resampled manifest is the debiasing -> training contract: the input manifest where
only the train rows are resampled (val and test rows unchanged), plus the columns
``weight`` (float), ``augment`` (bool) and ``group`` (int, -1 when the row has no group).
"""
