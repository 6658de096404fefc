"""Which redis-py the cluster tests run against, and that it is one chatsvc supports.

pip resolves redis-py 7.0.x on Python 3.9 (7.1 needs 3.10) and a newer series
on later Pythons; ``.ci/run`` runs the suite on both ends, so both series are
exercised.  This test names the one in use (``-rA`` or the junit properties
show it) and checks it against pyproject.toml's floor and, on 3.9, that it
is the 7.0 series.
"""

from __future__ import annotations

import sys
from typing import Callable

import pytest

pytestmark = pytest.mark.cluster


def test_redis_py_series_matches_the_python(record_property: Callable[[str, object], None]) -> None:
    redis = pytest.importorskip("redis")
    major, minor = (int(x) for x in redis.__version__.split(".")[:2])
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    record_property("redis_py", redis.__version__)
    print(f"redis-py {redis.__version__} on Python {python}")
    assert (major, minor) >= (4, 5), "pyproject.toml asks for redis>=4.5"
    if sys.version_info < (3, 10):  # redis-py 7.1 and later need Python 3.10
        assert (major, minor) <= (7, 0), f"redis-py {redis.__version__} on Python {python}"
