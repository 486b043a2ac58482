"""validate: Great Expectations gate; a failure names the expectation and the failing row count.
(Broken prepared splits: tests/reliability/test_bad_data.py.)"""
import numpy as np
import pytest

from edgeopt.paths import Paths
from stages import validate


def test_clean_data_passes(tiny_project, tiny_params):
    m = validate.run(tiny_params, Paths(tiny_project))
    assert m["success"] and m["failed"] == 0 and m["expectations"] >= 10
    assert "PASSED" in (tiny_project / "reports" / "validation.md").read_text()


def _corrupt(project, split, fn):
    d = project / "data" / "prepared" / split
    images, labels = np.load(d / "images.npy"), np.load(d / "labels.npy")
    images, labels = fn(images, labels)
    np.save(d / "images.npy", images)
    np.save(d / "labels.npy", labels)


def test_class_imbalance_and_minimum_per_class(tiny_project, tiny_params):
    def drop_most_of_class_0(images, labels):
        keep = (labels != 0) | (np.cumsum(labels == 0) <= 5)
        return images[keep], labels[keep]
    _corrupt(tiny_project, "train", drop_most_of_class_0)
    with pytest.raises(validate.ValidationFailed) as err:
        validate.run(tiny_params, Paths(tiny_project))
    assert "(count) failed on 1 of 10" in str(err.value)
    assert "(share_of_largest) failed on 1 of 10" in str(err.value)


def test_pixel_range_bound_from_params(tiny_project, tiny_params):
    tiny_params.validate_.pixel_max = 200  # digits reach 255
    with pytest.raises(validate.ValidationFailed, match=r"\(pixel_max\) failed on"):
        validate.run(tiny_params, Paths(tiny_project))
