import math

import numpy as np
import pandas as pd
import pytest

from neurokedro.cohorts.labels import LabelError, as_text, parse_age, parse_sex


@pytest.mark.parametrize(
    "value, expected",
    [(46.71, 46.71), ("46.71", 46.71), ("22-25", 23.5), ("36+", 36.0), (" 60 - 70 ", 65.0), (20, 20.0)],
)
def test_parse_age_accepts_numbers_and_ranges(value, expected):
    assert parse_age(value) == pytest.approx(expected)


@pytest.mark.parametrize("value", [None, "", float("nan"), "NA"])
def test_parse_age_missing_is_nan(value):
    assert math.isnan(parse_age(value))


@pytest.mark.parametrize("value, fragment", [("abc", "not a number"), (-3, "plausible"), (150, "plausible"), ("30-20", "reversed")])
def test_parse_age_rejects_impossible_values(value, fragment):
    with pytest.raises(LabelError, match=fragment):
        parse_age(value)


@pytest.mark.parametrize(
    "value, code", [("M", 0.0), ("F", 1.0), ("male", 0.0), ("Female", 1.0), (1, 0.0), (2, 1.0), ("2", 1.0), (2.0, 1.0)]
)
def test_parse_sex_default_mapping(value, code):
    assert parse_sex(value) == code


def test_parse_sex_custom_mapping_and_errors():
    assert parse_sex("h", {"h": "M", "m": "F"}) == 0.0
    assert parse_sex("m", {"h": "M", "m": "F"}) == 1.0
    with pytest.raises(LabelError, match="accepted"):
        parse_sex("X")
    assert math.isnan(parse_sex(None))


def test_as_text_names_every_missing_value_alike_on_any_pandas():
    values = pd.Series([1.0, np.nan, "a", None, pd.NA], dtype=object)
    assert as_text(values).tolist() == ["1.0", "unknown", "a", "unknown", "unknown"]
    assert as_text(pd.Series([np.nan, 2.0]), missing="").tolist() == ["", "2.0"]
