"""What every test module shares: hypothesis budgets and fixtures (plain helpers are in helpers.py).

Hypothesis runs the ``quick`` profile unless ``BLOCKFS_HYPOTHESIS=thorough`` selects the long one
(ten times the examples), e.g. ``BLOCKFS_HYPOTHESIS=thorough make test`` before a release. Test
modules whose examples cost more take a share of the profile's budget (``helpers.examples``)
instead of hard-coding counts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from helpers import mounted, unavailable

#: Examples per cheap property test (a parser call) in the quick profile; thorough runs ten times as many.
QUICK_EXAMPLES = 1500

settings.register_profile("quick", max_examples=QUICK_EXAMPLES, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("thorough", settings.get_profile("quick"), max_examples=10 * QUICK_EXAMPLES)
settings.load_profile(os.environ.get("BLOCKFS_HYPOTHESIS", "quick"))


@pytest.fixture(params=["tmpfs", "dev-full"])
def tiny_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, str]]:
    """(folder, kind): a folder on a 2 MiB tmpfs ("tmpfs"; mounting needs root), or a plain folder
    ("dev-full") in which the test points a shard at /dev/full. A test using it runs on both."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    if request.param == "dev-full":
        yield folder, "dev-full"
        return
    with mounted(folder, "-t", "tmpfs", "-o", "size=2M", "tmpfs") as ok:
        if not ok:
            unavailable("cannot mount a tmpfs (it needs root)")
        yield folder, "tmpfs"
