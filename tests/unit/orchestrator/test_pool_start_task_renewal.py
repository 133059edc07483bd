"""A kept pool's start task: when its node script SAS must be renewed, and what the renewal keeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from azure.batch.models import (
    AutoUserSpecification,
    BatchMetadataItem,
    BatchNode,
    BatchStartTask,
    BatchStartTaskInfo,
    EnvironmentSetting,
    ResourceFile,
    UserIdentity,
)
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.azure import pool, sas
from orchestrator.local.processes import AZURITE_ACCOUNT_KEY, AZURITE_ACCOUNT_NAME

ACCOUNT_URL = "http://127.0.0.1:10000/devstoreaccount1"
CONTAINER = "topn-app"
BLOB = "node/0123456789ab/node.pyz"
NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)

# SAS expiries are whole seconds in UTC (Storage's `se` format).
expiries = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
).map(lambda moment: moment.replace(microsecond=0))


def read_url(
    expiry: datetime, container: str = CONTAINER, blob_name: str = BLOB, account_url: str = ACCOUNT_URL
) -> str:
    """A real read SAS URL, signed the way the run signs them (Azurite's documented key)."""
    token = sas.mint_blob_read_sas(
        account_name=AZURITE_ACCOUNT_NAME,
        container=container,
        blob_name=blob_name,
        start=expiry - timedelta(hours=3),
        expiry=expiry,
        account_key=AZURITE_ACCOUNT_KEY,
    )
    return sas.blob_url(account_url, container, blob_name, token)


@given(expiries)
def test_the_expiry_of_a_minted_sas_is_read_back(expiry: datetime) -> None:
    assert pool.sas_expiry(read_url(expiry)) == expiry


def test_a_url_without_a_readable_expiry_has_none() -> None:
    assert pool.sas_expiry(f"{ACCOUNT_URL}/{CONTAINER}/{BLOB}") is None
    assert pool.sas_expiry(f"{ACCOUNT_URL}/{CONTAINER}/{BLOB}?sv=2024-01-01&se=tomorrow&sp=r") is None
    # An expiry without an offset is UTC.
    naive = pool.sas_expiry(f"{ACCOUNT_URL}/{CONTAINER}/{BLOB}?se=2026-11-22T05%3A00%3A00&sp=r")
    assert naive == datetime(2026, 11, 22, 5, 0, tzinfo=UTC)


@given(expiries, expiries)
def test_the_same_script_is_renewed_exactly_when_its_sas_ends_before_it_is_needed(
    expiry: datetime, needed_until: datetime
) -> None:
    this_run = read_url(needed_until)
    reason = pool.start_task_renewal_reason(read_url(expiry), this_run, needed_until)
    assert reason == ("expiring" if expiry < needed_until else None)


@given(expiries, expiries)
def test_another_script_is_always_renewed(expiry: datetime, needed_until: datetime) -> None:
    this_run = read_url(needed_until)
    others = [
        read_url(expiry, blob_name="node/ba9876543210/node.pyz"),
        read_url(expiry, container="other-app"),
        read_url(expiry, account_url="https://elsewhere.blob.core.windows.net"),
    ]
    for other in others:
        assert pool.start_task_renewal_reason(other, this_run, needed_until) == "other_script"


def test_a_missing_expiry_counts_as_expiring_and_no_script_as_nothing_to_renew() -> None:
    unsigned = f"{ACCOUNT_URL}/{CONTAINER}/{BLOB}"
    assert pool.start_task_renewal_reason(unsigned, read_url(NOW), NOW) == "expiring"
    assert pool.start_task_renewal_reason(None, read_url(NOW), NOW) is None


def test_a_blob_is_matched_whether_or_not_its_url_is_percent_encoded() -> None:
    name = "node/with space#/node.pyz"
    encoded = sas.blob_url(ACCOUNT_URL, CONTAINER, name, "se=2026-11-22T05%3A00%3A00Z&sig=x")
    assert "%20" in encoded and "%23" in encoded
    other_spelling = "HTTP://127.0.0.1:10000/devstoreaccount1/topn-app/node/with space%23/node.pyz?sp=r"
    assert pool.same_blob(encoded, other_spelling)
    assert not pool.same_blob(encoded, sas.blob_url(ACCOUNT_URL, CONTAINER, "node/with space/node.pyz"))
    assert not pool.same_blob(encoded, sas.blob_url(ACCOUNT_URL, "topn", name))


def start_task(script_url: str) -> BatchStartTask:
    return BatchStartTask(
        command_line="/bin/sh -c 'my own install && cp node.pyz \"$AZ_BATCH_NODE_SHARED_DIR\"'",
        resource_files=[
            ResourceFile(http_url="https://example.org/tools.tar", file_path="tools.tar"),
            ResourceFile(http_url=script_url, file_path="node.pyz", file_mode="0644"),
        ],
        environment_settings=[EnvironmentSetting(name="MODE", value="kept")],
        user_identity=UserIdentity(auto_user=AutoUserSpecification(scope="pool", elevation_level="admin")),
        max_task_retry_count=3,
        wait_for_success=True,
    )


def test_a_renewed_start_task_changes_only_the_node_script_url() -> None:
    old_url, new_url = read_url(NOW - timedelta(hours=1)), read_url(NOW + timedelta(hours=3))
    original = start_task(old_url)
    renewed = pool.renewed_start_task(original, new_url)
    assert pool.staged_script_url(renewed) == new_url
    assert pool.staged_script_url(original) == old_url  # the pool's own copy is not touched
    expected = start_task(new_url).as_dict()
    assert renewed.as_dict() == expected


def test_a_start_task_without_the_node_script_stages_none() -> None:
    assert pool.staged_script_url(None) is None
    assert pool.staged_script_url(BatchStartTask(command_line="/bin/true")) is None
    other = BatchStartTask(
        command_line="/bin/true", resource_files=[ResourceFile(http_url="https://x/y", file_path="y")]
    )
    assert pool.staged_script_url(other) is None


def test_script_metadata_keeps_the_users_items_and_is_read_back() -> None:
    users = [BatchMetadataItem(name="owner", value="team-a")]
    first = pool.script_metadata(users, "node/aaaaaaaaaaaa/node.pyz", NOW - timedelta(days=1))
    second = pool.script_metadata(first, BLOB, NOW)
    assert [(item.name, item.value) for item in second] == [
        ("owner", "team-a"),
        ("topn-node-script", BLOB),
        ("topn-node-script-since", "2026-11-22T03:00:00+00:00"),
    ]
    assert pool.script_since(second, BLOB) == NOW
    assert pool.script_since(second, "node/aaaaaaaaaaaa/node.pyz") is None  # recorded for another script
    assert pool.script_since(users, BLOB) is None
    broken = [BatchMetadataItem(name="topn-node-script", value=BLOB)]
    assert pool.script_since(broken, BLOB) is None


def node_started(at: datetime | None) -> BatchNode:
    info = BatchStartTaskInfo(state="completed", start_time=at, retry_count=0) if at is not None else None
    return BatchNode(id="n", state="idle", start_task_info=info)


@given(st.lists(st.one_of(st.none(), st.integers(min_value=-7200, max_value=7200)), max_size=5))
def test_a_node_may_hold_an_older_script_when_its_start_task_began_before_the_change_plus_skew(
    offsets_s: list[int | None],
) -> None:
    nodes = [
        node_started(None if offset is None else NOW + timedelta(seconds=offset)) for offset in offsets_s
    ]
    skew_s = sas.CLOCK_SKEW.total_seconds()
    expected = any(offset is not None and offset < skew_s for offset in offsets_s)
    assert pool.may_hold_older_script(nodes, NOW) == expected
