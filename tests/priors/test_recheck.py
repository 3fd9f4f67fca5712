"""When an unavailable prior is looked up again: every recheck_minutes, within recheck_hours of the study."""

from __future__ import annotations

import datetime as dt

import pytest

from pacs_node.config.priors import PriorsConfig
from pacs_node.priors.recheck import RecheckPolicy

COMPLETED = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.timezone.utc)
SOURCE = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}


def test_the_next_recheck_is_one_interval_later_within_the_window() -> None:
    policy = RecheckPolicy(dt.timedelta(minutes=60), dt.timedelta(hours=72))
    now = COMPLETED + dt.timedelta(minutes=2)
    assert policy.next_recheck(COMPLETED, now) == (now + dt.timedelta(hours=1), COMPLETED + dt.timedelta(hours=72))


@pytest.mark.parametrize(("minutes_after", "planned"), [(71 * 60, True), (71 * 60 + 1, False), (80 * 60, False)])
def test_no_recheck_falls_after_the_window(minutes_after: int, planned: bool) -> None:
    policy = RecheckPolicy(dt.timedelta(minutes=60), dt.timedelta(hours=72))
    due, until = policy.next_recheck(COMPLETED, COMPLETED + dt.timedelta(minutes=minutes_after))
    assert (due is not None) is planned and until == COMPLETED + dt.timedelta(hours=72)


def test_the_policy_comes_from_the_priors_section() -> None:
    config = PriorsConfig(enabled=True, sources=[SOURCE], recheck_minutes=0.05, recheck_hours=1)
    assert RecheckPolicy.from_config(config) == RecheckPolicy(dt.timedelta(seconds=3), dt.timedelta(hours=1))
    assert RecheckPolicy.from_config(config.model_copy(update={"recheck_minutes": 0})) is None
    assert RecheckPolicy.from_config(config.model_copy(update={"enabled": False})) is None


@pytest.mark.parametrize(("interval", "window"), [(0, 60), (-1, 60), (120, 60)])
def test_a_policy_that_would_never_recheck_is_refused(interval: float, window: float) -> None:
    with pytest.raises(ValueError, match="interval|window"):
        RecheckPolicy(dt.timedelta(minutes=interval), dt.timedelta(minutes=window))
