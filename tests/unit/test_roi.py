"""ROI rules, one by one: each violation has its own message naming the rule."""
import numpy as np
import pytest

from tango_dqm import Roi, RoiError, parse_roi


def test_empty_disables():
    assert parse_roi([]) is None
    assert parse_roi(np.array([], dtype=np.int32)) is None


def test_valid_roi_and_slices():
    roi = parse_roi([2, 3, 4, 5], shape=(10, 6))
    assert roi == Roi(2, 3, 4, 5)
    img = np.arange(60).reshape(10, 6)
    assert img[roi.slices()].shape == (5, 3)
    assert roi.area == 15


@pytest.mark.parametrize("value, rule", [
    ([1, 2, 3], "exactly 4 values"),
    ([1, 2, 3, 4, 5], "exactly 4 values"),
    ([1.0, 2, 3, 4], "integers"),
    ([True, 2, 3, 4], "integers"),
    (["1", 2, 3, 4], "integers"),
    ([-1, 2, 3, 4], "offsets must be >= 0"),
    ([1, 2, -3, 4], "offsets must be >= 0"),
    ([1, 0, 3, 4], "sizes must be > 0"),
    ([1, 2, 3, -4], "sizes must be > 0"),
])
def test_each_rule_has_its_message(value, rule):
    with pytest.raises(RoiError, match=rule):
        parse_roi(value, name="roi_signal")


def test_float_array_refused():
    with pytest.raises(RoiError, match="integers"):
        parse_roi(np.array([1.0, 2.0, 3.0, 4.0]))


@pytest.mark.parametrize("value, rule", [
    ([5, 2, 0, 1], "offset_x \\+ size_x must be <= image width"),
    ([0, 1, 9, 2], "offset_y \\+ size_y must be <= image height"),
])
def test_must_fit_once_shape_known(value, rule):
    assert parse_roi(value) is not None  # shape unknown: accepted
    with pytest.raises(RoiError, match=rule):
        parse_roi(value, shape=(10, 6), name="roi_signal")


def test_message_names_the_parameter():
    with pytest.raises(RoiError, match="^roi_background:"):
        parse_roi([0, 0, 0, 0], name="roi_background")
