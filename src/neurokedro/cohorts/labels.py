"""Parsing of the label forms real cohorts use: ages as numbers or ranges, sex as codes.

Every adapter leaves labels as given; the ``encode_labels`` node parses them here, once, so that a
value that cannot be parsed becomes a QC finding instead of a crash.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import pandas as pd

#: Encoding of sex used throughout NeuroKedro (the positive class of sex classification is F).
SEX_CODES: dict[str, int] = {"M": 0, "F": 1}

from neurokedro.schemas.labels import DEFAULT_SEX_MAPPING  # noqa: E402  (the labels schema's default)

_RANGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[-–]\s*(\d+(?:\.\d+)?)\s*$")
_OPEN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*\+\s*$")


class LabelError(ValueError):
    """A label value that cannot be parsed or is impossible; the message says which and why."""


def parse_age(value: Any, min_age: float = 0.0, max_age: float = 120.0) -> float:
    """Parse an age in years.

    Accepts a number (``46.7``), a numeric string, a range ``"22-25"`` (midpoint, 23.5) or an
    open range ``"36+"`` (its lower bound, 36). Missing values (``None``, NaN, ``""``) give NaN:
    a missing age is not an error for tasks that do not need it.

    Args:
        value: the age as found in the cohort table.
        min_age: smallest plausible age in years (inclusive).
        max_age: largest plausible age in years (inclusive).

    Returns:
        Age in years as float, or NaN when missing.

    Raises:
        LabelError: if the value is not a number or range, or is outside ``[min_age, max_age]``.
    """
    if _is_missing(value):
        return math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        age = float(value)
    else:
        text = str(value).strip()
        if match := _RANGE.match(text):
            low, high = float(match[1]), float(match[2])
            if high < low:
                raise LabelError(f"age range {text!r} is reversed")
            age = (low + high) / 2
        elif match := _OPEN.match(text):
            age = float(match[1])
        else:
            try:
                age = float(text)
            except ValueError:
                raise LabelError(f"age {text!r} is not a number or a range like '22-25' or '36+'") from None
    if not math.isfinite(age) or not min_age <= age <= max_age:
        raise LabelError(f"age {age!r} is outside the plausible range [{min_age}, {max_age}] years")
    return age


def parse_sex(value: Any, mapping: Mapping[str, str] | None = None) -> float:
    """Parse sex into NeuroKedro's code: M=0, F=1.

    Args:
        value: the sex as found in the table (``"M"``, ``"female"``, ``2`` ...).
        mapping: lower-case string value -> ``"M"`` or ``"F"``; defaults to
            :data:`DEFAULT_SEX_MAPPING` (``M/F``, ``male/female``, ``1/2`` as in IXI's ``SEX_ID``).

    Returns:
        0.0 for male, 1.0 for female, NaN when missing.

    Raises:
        LabelError: if the value is not in the mapping (the message lists the accepted values).
        ValueError: if the mapping maps a value to anything but ``"M"`` or ``"F"``.
    """
    mapping = {str(k).strip().lower(): str(v).strip().upper() for k, v in (mapping or DEFAULT_SEX_MAPPING).items()}
    wrong = {k: v for k, v in mapping.items() if v not in SEX_CODES}
    if wrong:
        # A configuration error, not a bad row: a plain ValueError stops the run.
        raise ValueError(f"sex_mapping must map every value to one of {sorted(SEX_CODES)}; got {wrong}")
    if _is_missing(value):
        return math.nan
    key = str(value).strip().lower()
    if isinstance(value, float) and value.is_integer():
        key = str(int(value))
    if key not in mapping:
        raise LabelError(f"sex {value!r} is not in the mapping; accepted: {sorted(mapping)}")
    return float(SEX_CODES[mapping[key]])


def is_missing(value: Any) -> bool:
    """True for the values that mean 'no label': None, NaN and blank, "nan", "na", "n/a", "none"."""
    return _is_missing(value)


def as_text(values: pd.Series, missing: str | None = "unknown") -> pd.Series:
    """Values as strings, every missing one (None, NaN, ``pd.NA``) as ``missing``.

    Use it wherever labels or ids become strings (strata, subgroups, lookup keys):
    ``Series.astype(str)`` turns NaN into the string ``"nan"`` under pandas < 3 but keeps it
    missing under pandas >= 3, so joining or comparing its result breaks on one of them.

    Args:
        values: any Series (numbers, strings, mixed objects).
        missing: the string that stands for a missing value (None keeps it missing, as None).

    Returns:
        An object-dtype Series of ``str`` (and ``missing``) on the same index.
    """
    return pd.Series([missing if is_na(v) else str(v) for v in values], index=values.index, dtype=object)


def is_na(value: Any) -> bool:
    """True for a missing cell: None, NaN, ``pd.NA``, ``pd.NaT`` (not for blank or "n/a" text:
    see :func:`is_missing`)."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # array-likes are values, not missing
        return False


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in {"", "nan", "na", "n/a", "none"}
