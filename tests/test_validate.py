"""validate: Great Expectations gate; a failure names the expectation and the failing row count."""
import json

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


def test_test_split_overlapping_train_fails_with_row_count(tiny_project, tiny_params):
    train = np.load(tiny_project / "data/prepared/train/images.npy")

    def leak(images, labels):
        images = images.copy()
        images[:7] = train[:7]
        return images, labels
    _corrupt(tiny_project, "test", leak)
    with pytest.raises(validate.ValidationFailed, match=r"expect_column_values_to_be_in_set\(duplicates_train\) failed on 7 of"):
        validate.run(tiny_params, Paths(tiny_project))
    report = json.loads((tiny_project / "metrics/validate.json").read_text())
    assert report["success"] is False
    failed = [r for r in report["results"] if not r["success"]]
    assert [r["column"] for r in failed] == ["duplicates_train"] and failed[0]["failed_rows"] == 7
    assert "FAIL" in (tiny_project / "reports/validation.md").read_text()


def test_label_outside_class_list_fails(tiny_project, tiny_params):
    _corrupt(tiny_project, "val", lambda im, lb: (im, np.where(np.arange(len(lb)) < 3, 42, lb)))
    with pytest.raises(validate.ValidationFailed, match=r"\(label\) failed on 3 of"):
        validate.run(tiny_params, Paths(tiny_project))


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
