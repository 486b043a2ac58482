"""The test harness itself: `make test` hands whole files to two pytest-xdist workers, so files with slow tests must
come first and each file's tests stay together; tests never touch the user's Prefect home."""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from tests.conftest import pytest_collection_modifyitems


def _item(path: str, slow: bool = False):
    marker = object() if slow else None
    return SimpleNamespace(path=Path(path), name=path,
                           get_closest_marker=lambda name: marker if name == "slow" else None)


def test_files_with_slow_tests_come_first_and_keep_their_order():
    items = [_item("a.py"), _item("b.py"), _item("b.py", slow=True), _item("c.py"), _item("d.py", slow=True),
             _item("a.py")]
    b_plain, b_slow = items[1], items[2]
    pytest_collection_modifyitems(None, items)
    assert [str(i.path) for i in items] == ["b.py", "b.py", "d.py", "a.py", "c.py", "a.py"]
    assert items[0] is b_plain and items[1] is b_slow  # within a file: collection order kept


def test_the_real_collection_keeps_each_file_together_with_slow_files_first(request):
    paths = [item.path for item in request.session.items]
    starts = [p for k, p in enumerate(paths) if k == 0 or paths[k - 1] != p]
    assert len(starts) == len(set(starts)), "a file's tests are split: xdist --dist loadfile would still work, " \
                                            "but the slow-first order would not hold"
    slow = {item.path for item in request.session.items if item.get_closest_marker("slow")}
    flags = [p in slow for p in starts]
    assert flags == sorted(flags, reverse=True)


def test_prefect_home_is_a_temporary_one_of_this_test_process():
    home = Path(os.environ["PREFECT_HOME"])
    assert home.is_dir() and home.name.startswith("edgeopt-tests-prefect-")
    assert home != Path.home() / ".prefect" and "PREFECT_API_URL" not in os.environ
