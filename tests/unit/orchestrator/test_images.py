"""Judging the configured image pair against the supported ones (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.azure.images import END_OF_LIFE_WARNING, SupportedImage, judge_image
from orchestrator.settings import PoolSettings

NOW = datetime(2026, 12, 6, tzinfo=UTC)


def image(offer: str, agent: str, end: datetime | None, publisher: str = "canonical") -> SupportedImage:
    return SupportedImage(publisher, offer, "server", agent, end, verified=True)


@given(days_left=st.integers(-400, 4000))
def test_a_warning_exactly_when_the_end_of_life_is_within_90_days(days_left: int) -> None:
    end = NOW + timedelta(days=days_left)
    supported = [image("ubuntu-24_04-lts", "batch.node.ubuntu 24.04", end)]
    verdict = judge_image(PoolSettings(), supported, NOW)
    assert verdict.image is not None
    assert (verdict.warning is not None) == (end - NOW <= END_OF_LIFE_WARNING)


def test_matching_ignores_case_and_alternatives_put_the_same_publisher_and_longest_support_first() -> None:
    supported = [
        image("debian-12", "batch.node.debian 12", NOW + timedelta(days=900), publisher="debian"),
        image("ubuntu-22_04", "batch.node.ubuntu 22.04", NOW + timedelta(days=100)),
        image("UBUNTU-24_04-LTS", "Batch.Node.Ubuntu 24.04", NOW + timedelta(days=800)),
        image("ubuntu-18_04", "batch.node.ubuntu 18.04", NOW - timedelta(days=1)),  # retired
    ]
    verdict = judge_image(PoolSettings(), supported, NOW)
    assert verdict.image is supported[2] and verdict.warning is None
    assert [item.offer for item in verdict.alternatives] == ["UBUNTU-24_04-LTS", "ubuntu-22_04", "debian-12"]
    missing = judge_image(PoolSettings(node_agent_sku_id="batch.node.ubuntu 20.04"), supported, NOW)
    assert missing.image is None and missing.alternatives == verdict.alternatives
