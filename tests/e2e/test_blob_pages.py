"""Blob prefixes listed page by page while the run's first tasks already run (issue 13, points 1 and 4).

`[run] list_page_blobs` makes the listing take several pages of a few blobs. A reverse proxy in front
of Azurite (listing_gate.py) holds the listing after a chosen page until the test opens it, so what
must happen while the listing is unfinished (a task added; a kill) happens there, not by luck of
timing. A run that listed everything before its first task would wait at the gate for ever.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from azure.storage.blob.aio import BlobServiceClient

from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.fault_support import check_summary, job_tasks
from tests.e2e.listing_gate import listing_gate
from tests.e2e.run_cli import output_rows, reference_top, topn_environment
from tests.e2e.test_crash_resume import (
    assert_no_partial_files,
    assert_one_task_per_input,
    crash_environment,
    load_record,
    run_id_in,
    run_until,
)
from tests.secret_scan import find_secrets
from tests.task_units import task_input_blobs

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(240)]

PAGE = 4
LOGS = {f"logs/f{number:02d}.txt": f"buoy {'kelp ' * (number % 5)}tern{number % 3}\n" for number in range(13)}
LOGS["logs/c.txt"] = "anchor anchor rope\n"
OTHER = {"other/c.txt": "mast mast sail\n", "other/x.txt": "storm quay quay salt\n"}
LOCAL = {"c.txt": "kelp kelp reef\n"}


@pytest_asyncio.fixture(loop_scope="session")
async def user_container(azurite: StorageEndpoint) -> AsyncIterator[tuple[BlobServiceClient, str]]:
    """A container of the user's with LOGS and OTHER (a fresh name: tests run side by side)."""
    async with BlobServiceClient.from_connection_string(azurite.connection_string, retry_total=2) as client:
        container = f"userpages-{uuid.uuid4().hex[:12]}"
        await client.create_container(container)
        for name, text in {**LOGS, **OTHER}.items():
            await client.get_blob_client(container, name).upload_blob(text.encode("utf-8"))
        yield client, container
        await client.delete_container(container)


def named(event: dict[str, Any], name: str) -> bool:
    return bool(event["event"] == name)


async def test_the_first_task_is_added_while_later_pages_are_still_listed_and_results_are_exact(
    batch_emulator: BatchEndpoint,
    azurite: StorageEndpoint,
    user_container: tuple[BlobServiceClient, str],
    tmp_path: Path,
) -> None:
    _, container = user_container
    (tmp_path / "texts").mkdir()
    for relpath, text in LOCAL.items():
        (tmp_path / "texts" / relpath).write_text(text, encoding="utf-8")
    # Two prefixes' first pages go through before the run is created; every later page waits. The
    # tasks' manifests name the proxy's endpoint too: everything is checked while it is up.
    async with listing_gate(azurite.endpoint, container, passing=2) as (gate, endpoint):
        env = topn_environment(
            batch_emulator,
            azurite,
            tmp_path / ".topn",
            TOPN_STORAGE_BLOB_ENDPOINT=endpoint,
            TOPN_POOL_ID="e2e-blob-pages",
            TOPN_RUN_LIST_PAGE_BLOBS=str(PAGE),
            TOPN_RUN_MAX_FILES_PER_TASK="2",
            TOPN_RUN_DELETE_JOB="false",
        )

        def open_at_first_task(event: dict[str, Any]) -> None:
            if named(event, "tasks.chunk_added"):
                gate.open()

        arguments = [f"az://{container}/logs/", f"az://{container}/other/", "texts"]
        run, _ = await run_until(
            ["run", *arguments, "--out", "out", "--json", "--log-level", "debug"],
            tmp_path,
            env,
            None,
            on_event=open_at_first_task,
        )
        assert run.exit_code == 0, run.stderr[-3000:]
        events = run.events()
        order = [event["event"] for event in events]
        pages = [position for position, name in enumerate(order) if name == "inputs.page_listed"]
        # logs/ has 14 blobs: its first page before the run, three more pages in the run; other/ one page.
        assert len(pages) == 3 and order.index("tasks.chunk_added") < pages[0]
        started = next(event for event in events if named(event, "run.started"))
        assert (started["files"], started["still_listing"]) == (1 + PAGE + len(OTHER), True)
        listed = next(event for event in events if named(event, "inputs.listed"))
        assert (listed["prefixes"], listed["blobs"], listed["storage_requests"]) == (
            2,
            len(LOGS) + len(OTHER),
            5,
        )
        assert order.index("inputs.listed") > pages[-1]
        submitted = next(event for event in events if named(event, "tasks.submitted"))
        assert submitted["first_task_s"] is not None

        # Local names first, then the first pages (argument order), then the later pages.
        expected = {
            **LOCAL,
            **{name.removeprefix("logs/"): text for name, text in LOGS.items() if name != "logs/c.txt"},
            "c~2.txt": LOGS["logs/c.txt"],
            "c~3.txt": OTHER["other/c.txt"],
            "x.txt": OTHER["other/x.txt"],
        }
        summary = run.summary()
        assert check_summary(summary, expected) == []
        assert [entry["path"] for entry in summary["files"]] == sorted(expected)
        assert summary["totals"]["bytes"] == sum(len(text.encode("utf-8")) for text in expected.values())
        for relpath, text in expected.items():
            output = tmp_path / "out" / (relpath.removesuffix(".txt") + "_OUTPUT.txt")
            assert output_rows(output) == reference_top([text], "words", 10), relpath
        # One task per planned unit, every blob read by exactly one of them, at most 2 files a unit.
        record = await load_record(tmp_path / ".topn", summary["run_id"])
        assert all(listing.complete and listing.marker is None for listing in record.listings)
        tasks = await job_tasks(
            batch_emulator.endpoint,
            batch_emulator.account_name,
            batch_emulator.account_key,
            f"topn-{summary['run_id']}",
        )
        assert sorted(task.id for task in tasks) == sorted(record.task_ids)
        # The later pages were not even asked for before the first task was in: their parsing would
        # only have slowed the first add down.
        assert len(gate.arrived_at) == 5  # 2 first pages before the run, then 3 more
        assert gate.arrived_at[2] >= min(task.creation_time for task in tasks)
        read = [blob for task in tasks for blob in await task_input_blobs(task)]
        assert len(read) == len(set(read)) == len(expected)
        assert all(len(record.inputs_by_task[task_id]) <= 2 for task_id in record.task_ids)
        assert find_secrets([("stdout", run.stdout), ("stderr", run.stderr)], [azurite.account_key]) == []


async def test_a_run_killed_while_listing_resumes_the_listing_to_exact_results_without_duplicates(
    batch_emulator: BatchEndpoint,
    azurite: StorageEndpoint,
    user_container: tuple[BlobServiceClient, str],
    tmp_path: Path,
) -> None:
    """SIGKILL with logs/'s third page held at the gate: the journal holds two pages and the marker."""
    _, container = user_container
    async with listing_gate(azurite.endpoint, container, passing=2) as (gate, endpoint):
        env = crash_environment(
            batch_emulator,
            azurite,
            tmp_path,
            TOPN_STORAGE_BLOB_ENDPOINT=endpoint,
            TOPN_POOL_ID="e2e-blob-pages-resume",
            TOPN_RUN_LIST_PAGE_BLOBS=str(PAGE),
        )
        first, killed = await run_until(
            ["run", f"az://{container}/logs/", "--out", "out", "--json", "--log-level", "debug"],
            tmp_path,
            env,
            lambda event: named(event, "inputs.page_listed"),  # page 2 journalled, page 3 held
        )
        assert killed and first.exit_code == -9, (first.exit_code, first.stderr[-2000:])
        assert gate.held == 1
        run_id = run_id_in(first)
        record = await load_record(tmp_path / ".topn", run_id)
        assert record.state == "PREPARING"
        (listing,) = record.listings
        assert (
            not listing.complete
            and listing.marker
            and (listing.container, listing.prefix) == (container, "logs/")
        )
        assert len(record.inputs) == 2 * PAGE  # the first page and one more, journalled whole
        names = sorted(LOGS)
        assert [item.path for item in sorted(record.inputs, key=lambda item: item.index)] == [
            f"az://{container}/{name}" for name in names[: 2 * PAGE]
        ]

        # Resumed straight against Azurite: the listing goes on from the journalled marker. The gate
        # stays up meanwhile: the first run's tasks fetch their manifests through it, as they would
        # from a storage endpoint that is still there.
        env["TOPN_STORAGE_BLOB_ENDPOINT"] = azurite.endpoint
        second, _ = await run_until(["resume", run_id, "--json", "--log-level", "debug"], tmp_path, env, None)
        assert second.exit_code == 0, second.stderr[-3000:]
        events = second.events()
        assert [event["blobs"] for event in events if named(event, "inputs.page_listed")] == [
            PAGE,
            len(LOGS) - 3 * PAGE,
        ]
        listed = next(event for event in events if named(event, "inputs.listed"))
        assert (listed["blobs"], listed["storage_requests"]) == (len(LOGS), 2)  # two pages, none twice
        expected = {name.removeprefix("logs/"): text for name, text in LOGS.items()}
        summary = second.summary()
        assert check_summary(summary, expected) == []
        relpaths = sorted(expected)
        # Each blob counted once (the first run's tasks name their manifests through the gate).
        await assert_one_task_per_input(batch_emulator, run_id, relpaths)
        assert_no_partial_files(tmp_path / "out", relpaths)
        resumed = await load_record(tmp_path / ".topn", run_id)
        assert len(resumed.inputs) == len(LOGS) and all(item.complete for item in resumed.listings)
        assert find_secrets([("stderr", first.stderr + second.stderr)], [azurite.account_key]) == []


async def test_a_later_page_that_cannot_be_listed_leaves_the_run_resumable(
    batch_emulator: BatchEndpoint,
    azurite: StorageEndpoint,
    user_container: tuple[BlobServiceClient, str],
    tmp_path: Path,
) -> None:
    """The first page listed, the second refused (HTTP 403): an interruption naming `topn resume`."""
    _, container = user_container
    async with listing_gate(azurite.endpoint, container, passing=1, refuse=True) as (gate, endpoint):
        env = crash_environment(
            batch_emulator,
            azurite,
            tmp_path,
            TOPN_STORAGE_BLOB_ENDPOINT=endpoint,
            TOPN_POOL_ID="e2e-blob-pages-refused",
            TOPN_RUN_LIST_PAGE_BLOBS=str(PAGE),
            TOPN_RUN_MAX_FILES_PER_TASK="2",
        )
        first, _ = await run_until(
            ["run", f"az://{container}/logs/", "--out", "out", "--json"], tmp_path, env, None
        )
        assert gate.held == 1
        assert first.exit_code == 1, first.stderr[-2000:]  # not 2: the run exists, and goes on
        run_id = run_id_in(first)
        (failed,) = [event for event in first.events() if named(event, "run.failed")]
        assert failed["resumable"] is True and failed["error_type"] == "ServiceUnavailableError"
        assert "HTTP 403" in failed["error"] and f"topn resume {run_id}" in failed["error"]
        record = await load_record(tmp_path / ".topn", run_id)
        assert record.state == "PREPARING" and len(record.inputs) == PAGE and not record.listings[0].complete

        # The first page's tasks went in before the refusal and read their blobs through the gate,
        # which stays up (answering only listings with 403) as a storage endpoint would.
        env["TOPN_STORAGE_BLOB_ENDPOINT"] = azurite.endpoint
        second, _ = await run_until(["resume", run_id, "--json"], tmp_path, env, None)
    assert second.exit_code == 0, second.stderr[-3000:]
    expected = {name.removeprefix("logs/"): text for name, text in LOGS.items()}
    assert check_summary(second.summary(), expected) == []
    assert find_secrets([("stderr", first.stderr + second.stderr)], [azurite.account_key]) == []
