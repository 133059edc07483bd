"""Blob inputs' pure parts: arguments, names, merging with local inputs, manifests, journal round trip."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.manifest import parse_manifest
from orchestrator import blobinputs
from orchestrator.errors import InputError
from orchestrator.inputs import BlobSource, InputFile, renamed_inputs
from orchestrator.journal import JournalInput, RunRecord
from orchestrator.run import resume, units

AZURITE = "http://127.0.0.1:10000/devstoreaccount1"
AZURE = "https://acct.blob.core.windows.net"


def parse(argument: str, endpoint: str = AZURITE, account: str = "devstoreaccount1") -> blobinputs.BlobPrefix:
    return blobinputs.parse_blob_argument(argument, blob_endpoint=endpoint, account_name=account)


def blob_input(container: str, name: str, relpath: str, size: int = 5, etag: str = '"0x1"') -> InputFile:
    source = BlobSource(container, name, etag)
    return InputFile(path=Path(source.address), relpath=relpath, size_bytes=size, blob=source)


@pytest.mark.parametrize(
    ("argument", "container", "prefix"),
    [
        ("az://logs/2026/", "logs", "2026/"),
        ("az://logs", "logs", ""),
        ("az://my-data/a b/c.txt", "my-data", "a b/c.txt"),
        (f"{AZURITE}/logs/2026/", "logs", "2026/"),
        (f"{AZURITE}/logs/a%20b/%C3%A9.txt", "logs", "a b/é.txt"),
        ("HTTP://127.0.0.1:10000/devstoreaccount1/logs", "logs", ""),
    ],
    ids=["az-prefix", "az-container", "az-spaces", "azurite-url", "percent-decoded", "scheme-case"],
)
def test_blob_arguments_name_a_container_and_a_prefix(argument: str, container: str, prefix: str) -> None:
    parsed = parse(argument)
    assert (parsed.container, parsed.prefix) == (container, prefix)


def test_an_azure_endpoint_url_of_the_configured_account_is_taken() -> None:
    parsed = parse(f"{AZURE}/texts/2026/", AZURE, "acct")
    assert (parsed.container, parsed.prefix) == ("texts", "2026/")


@pytest.mark.parametrize(
    ("argument", "named"),
    [
        ("https://other.blob.core.windows.net/texts/x", "other"),
        ("http://127.0.0.1:10001/devstoreaccount1/texts/x", "devstoreaccount1"),
        ("http://127.0.0.1:10000/otheraccount/texts/x", "otheraccount"),
    ],
    ids=["other-azure-account", "other-port", "other-path-account"],
)
def test_a_url_of_another_account_is_refused_naming_both_accounts_and_the_fix(
    argument: str, named: str
) -> None:
    with pytest.raises(InputError) as refused:
        parse(argument)
    message = str(refused.value)
    assert "'devstoreaccount1'" in message and f"names account {named!r}" in message
    assert "az://CONTAINER/PREFIX" in message and "blob_endpoint" in message
    assert refused.value.exit_code == 2


def test_a_pasted_sas_url_is_refused_without_showing_its_query() -> None:
    with pytest.raises(InputError) as refused:
        parse(f"{AZURITE}/texts/a.txt?sv=2023-11-03&sp=r&sig=SECRETSIGNATURE")
    assert "SECRETSIGNATURE" not in str(refused.value) and "sig=" not in str(refused.value)
    assert f"{AZURITE}/texts/a.txt" in str(refused.value)


@pytest.mark.parametrize(
    "argument", ["az://", "az://AB/x", "az://a/x", "az://bad_name/x", f"{AZURITE}/", f"{AZURITE}"], ids=str
)
def test_an_argument_without_a_valid_container_is_refused(argument: str) -> None:
    with pytest.raises(InputError, match="does not name a container"):
        parse(argument)


@pytest.mark.parametrize("container", ["topn-app", "topn-in-20261206t000000z-abcdef", "topn-out-x1"])
def test_topns_own_containers_are_never_inputs(container: str) -> None:
    with pytest.raises(InputError, match="topn's own containers"):
        blobinputs.check_not_topn_container(parse(f"az://{container}/x"), "topn")
    blobinputs.check_not_topn_container(parse(f"az://{container}/x"), "other")  # another prefix's: fine


def test_arguments_split_into_local_paths_and_blob_arguments(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x", encoding="utf-8")
    local, blobs = blobinputs.discover_arguments([str(tmp_path / "a.txt"), "az://c1/p", f"{AZURE}/c2/q"])
    assert [item.relpath for item in local] == ["a.txt"] and blobs == ["az://c1/p", f"{AZURE}/c2/q"]
    assert blobinputs.discover_arguments(["az://c1/p"]) == ([], ["az://c1/p"])


@pytest.mark.parametrize(
    ("name", "prefix", "relpath"),
    [
        ("logs/2026/a/b.txt", "logs/2026/", "a/b.txt"),
        ("logs/2026/a/b.txt", "logs/20", "2026/a/b.txt"),
        ("logs/2026/a/b.txt", "logs/2026/a/b.txt", "b.txt"),
        ("logs/2026/a/b.txt", "", "logs/2026/a/b.txt"),
    ],
    ids=["folder-prefix", "partial-prefix", "one-blob", "whole-container"],
)
def test_a_blobs_relpath_is_its_name_after_the_prefixs_last_slash(
    name: str, prefix: str, relpath: str
) -> None:
    assert blobinputs.relpath_of(name, prefix) == relpath


names = st.lists(
    st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=6), min_size=1
)


@given(parts=names, cut=st.integers(min_value=0, max_value=40))
def test_a_relpath_is_always_a_non_empty_tail_of_the_blob_name(parts: list[str], cut: int) -> None:
    name = "/".join(parts)
    prefix = name[: min(cut, len(name))]
    relpath = blobinputs.relpath_of(name, prefix)
    assert relpath and name.endswith(relpath) and not relpath.startswith("/")
    # Everything cut off is the prefix up to its last slash: the prefix's folder, never more.
    assert name[: len(name) - len(relpath)] == prefix[: prefix.rfind("/") + 1]


def test_merged_inputs_keep_local_names_and_number_later_clashes() -> None:
    local = [InputFile(Path("/data/c.txt"), "c.txt", 3), InputFile(Path("/data/n.txt"), "n.txt", 4)]
    blobs = [
        blob_input("logs", "2026/c.txt", "c.txt"),
        blob_input("logs", "2026/a/b.txt", "a/b.txt"),
        blob_input("other", "c.txt", "c.txt"),
        blob_input("logs", "2026/a/b.txt", "a/b.txt"),  # the same blob through a second prefix: once
    ]
    merged = blobinputs.merge_inputs(local, blobs)
    assert [(item.relpath, item.shown) for item in merged] == [
        ("a/b.txt", "az://logs/2026/a/b.txt"),
        ("c.txt", "/data/c.txt"),
        ("c~2.txt", "az://logs/2026/c.txt"),
        ("c~3.txt", "az://other/c.txt"),
        ("n.txt", "/data/n.txt"),
    ]
    # A renamed blob input is shown with its address (the table's "renamed" lines, summary's `source`).
    assert [item.shown for item in renamed_inputs(merged)] == ["az://logs/2026/c.txt", "az://other/c.txt"]


def test_a_blob_name_that_cannot_be_a_result_name_is_refused() -> None:
    with pytest.raises(InputError, match="backslash"):
        blobinputs.merge_inputs([], [blob_input("logs", "a\\b.txt", "a\\b.txt")])


def test_a_manifest_reads_local_inputs_from_the_run_container_and_blobs_from_their_own() -> None:
    run_source = f"{AZURITE}/topn-in-r?sp=r&sr=c&sig=run"
    logs_source = f"{AZURITE}/logs?sp=r&sr=c&sig=logs"
    other_source = f"{AZURITE}/other?sp=r&sr=c&sig=other"
    data = units.build_manifest(
        "t000003",
        tokenizer="words",
        top=3,
        source_url=run_source,
        entries=[
            units.UnitEntry("a/b.txt", "2026/a/b.txt", 7, etag='"0x7"', container="logs"),
            units.UnitEntry("c.txt", "runs/r/c.txt", 3),
            units.UnitEntry("c~3.txt", "c.txt", 2, etag='"0x9"', container="other"),
            units.UnitEntry("d.txt", "2026/d.txt", 1, etag='"0x8"', container="logs"),
        ],
        blob_sources={"logs": logs_source, "other": other_source, "unused": "x"},
    )
    manifest = parse_manifest(data)
    assert manifest.sources == (run_source, logs_source, other_source)
    assert [(item.source, item.blob, item.etag, item.size) for item in manifest.inputs] == [
        (1, "2026/a/b.txt", '"0x7"', 7),
        (0, "runs/r/c.txt", None, 3),
        (2, "c.txt", '"0x9"', 2),
        (1, "2026/d.txt", '"0x8"', 1),
    ]
    assert [item.output_name for item in manifest.inputs][2] == "c~3_OUTPUT.txt"
    with pytest.raises(KeyError):
        units.build_manifest(
            "t1",
            tokenizer="words",
            top=1,
            source_url=run_source,
            entries=[units.UnitEntry("x", "x", 1, container="nosas")],
        )


def test_a_blob_read_at_another_etag_is_noted_and_the_same_one_is_not() -> None:
    assert units.changed_blob_note('"0x1"', '"0x1"', 5, 9) is None
    assert units.changed_blob_note('"0x1"', None, 5, None) is None
    assert units.changed_blob_note("0x1", '"0x1"', 5, 5) is None  # a bare listed ETag is the same one
    assert blobinputs.quoted_etag("0x1") == blobinputs.quoted_etag('"0x1"') == '"0x1"'
    note = units.changed_blob_note('"0x1"', '"0x2"', 5, 9)
    assert (
        note is not None and '"0x1" -> "0x2"' in note and "5 -> 9 bytes" in note and "counted as read" in note
    )
    same_size = units.changed_blob_note('"0x1"', '"0x2"', 5, 5)
    assert same_size is not None and "bytes" not in same_size


def test_a_run_with_blob_inputs_journals_and_renews_their_read_sas_too() -> None:
    local = [InputFile(Path("/data/c.txt"), "c.txt", 3)]
    assert resume.sas_purposes(local) == ("input_read", "output_write")
    with_blobs = resume.sas_purposes([*local, blob_input("logs", "a.txt", "a.txt")])
    assert with_blobs == ("input_read", "output_write", "blob_read")
    deadline = datetime(2026, 12, 6, tzinfo=UTC)
    later = deadline + timedelta(hours=1)
    old_run = {"input_read": later, "output_write": later}  # a run without blob inputs records two
    assert not resume.sas_expire_before(old_run, deadline)
    assert resume.sas_expire_before(old_run, deadline, with_blobs)  # never recorded: renew
    assert not resume.sas_expire_before({**old_run, "blob_read": later}, deadline, with_blobs)
    assert resume.sas_expire_before({**old_run, "blob_read": deadline - timedelta(1)}, deadline, with_blobs)


def test_a_journalled_blob_input_comes_back_as_it_was_listed() -> None:
    address = "az://logs/2026/a b/c.txt"
    row = JournalInput(0, "a b/c.txt", address, 12, 0, None, address, "t000000", etag='"0x8DD"')
    local = JournalInput(1, "d.txt", "/data/d.txt", 3, 5, None, "runs/r/d.txt", "t000000")
    assert resume.blob_source(row) == BlobSource("logs", "2026/a b/c.txt", '"0x8DD"')
    assert resume.blob_source(local) is None


def test_pending_uploads_never_include_blob_inputs() -> None:
    address = "az://logs/a.txt"
    inputs = (
        JournalInput(0, "a.txt", address, 1, 0, None, address, "t000000", etag='"0x1"'),
        JournalInput(1, "b.txt", "/d/b.txt", 1, 1, None, "runs/r/b.txt", "t000000"),
    )
    record = RunRecord(
        run_id="r",
        created_at=datetime(2026, 12, 6, tzinfo=UTC),
        state="PREPARING",
        state_history=(),
        settings_snapshot={},
        inputs=inputs,
        uploads={},
        sas_expiries={},
        submitted_task_ids=frozenset(),
        completed={},
        downloads={},
    )
    assert resume.resumed_inputs(record)[0].blob == BlobSource("logs", "a.txt", '"0x1"')
    assert [item.relpath for item in resume.pending_uploads(record)] == ["b.txt"]


async def test_the_journal_keeps_a_blob_inputs_etag_and_a_migrated_row_has_none(tmp_path: Path) -> None:
    from orchestrator.journal import Journal, JournalError

    address = "az://logs/2026/a.txt"
    inputs = [
        JournalInput(0, "a.txt", address, 7, 0, None, address, "t000000", etag='"0x8DD"'),
        JournalInput(1, "b.txt", "/data/b.txt", 3, 9, None, "runs/r1/b.txt", "t000000"),
    ]
    async with await Journal.open(tmp_path) as journal:
        await journal.create_run("r1", {}, inputs)
        await journal.create_run("r1", {}, inputs)  # the same inputs again: a no-op
        with pytest.raises(JournalError, match="other inputs"):
            changed = [dataclasses.replace(inputs[0], etag='"0x9"'), inputs[1]]
            await journal.create_run("r1", {}, changed)
        record = await journal.load_run("r1")
    assert record is not None
    assert [(item.relpath, item.etag) for item in record.inputs] == [("a.txt", '"0x8DD"'), ("b.txt", None)]
    assert [item.blob for item in resume.resumed_inputs(record)] == [
        BlobSource("logs", "2026/a.txt", '"0x8DD"'),
        None,
    ]
