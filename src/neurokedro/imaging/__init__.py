"""Pure functions on volumes: reorient, check, mask, crop, resample, normalise.

Nothing here reads or writes files, except :mod:`neurokedro.imaging.runner`, which loads each
scan for the volume store and computes its cache key: functions take and return ``nibabel``
images or arrays, so every step is testable on a synthetic volume and reusable by training and
predict alike.
"""
