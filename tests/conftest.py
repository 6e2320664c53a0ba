"""Settings every test module shares: hypothesis budgets.

Hypothesis runs the ``quick`` profile unless ``BLOCKFS_HYPOTHESIS=thorough`` selects the long one
(ten times the examples), e.g. ``BLOCKFS_HYPOTHESIS=thorough make test`` before a release. Test
modules whose examples cost more take a share of the profile's budget (``helpers.examples``)
instead of hard-coding counts.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

#: Examples per cheap property test (a parser call) in the quick profile; thorough runs ten times as many.
QUICK_EXAMPLES = 1500

settings.register_profile("quick", max_examples=QUICK_EXAMPLES, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("thorough", settings.get_profile("quick"), max_examples=10 * QUICK_EXAMPLES)
settings.load_profile(os.environ.get("BLOCKFS_HYPOTHESIS", "quick"))
