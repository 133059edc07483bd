"""The daemon end to end, in-process, on the real emulator and Azurite.

Files arrive in the three ways issue 12 names (written in place and left to settle, renamed in,
announced by a `.done` marker), in sub-folders, with a duplicate and a file the node fails. Each
must end exactly once in done/ or failed/ (with its `.error.json`), results must be in
`outbox/<run_id>/` as `topn run` writes them, and the HTTP side must say so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import StartEmulator, StorageEndpoint
from tests.integration.daemon.support import (
    daemon_settings_for,
    files_under,
    folders_under,
    get_json,
    running_daemon,
    wait_async,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


def arrive(inbox: Path, scratch: Path) -> None:
    """Drop files into the inbox as producers do (blocking; run on a thread)."""
    (inbox / "sub").mkdir(parents=True, exist_ok=True)
    (inbox / "plain.txt").write_text("apple apple pear", encoding="utf-8")  # settles
    scratch.mkdir(parents=True, exist_ok=True)
    staged = scratch / "renamed.txt"
    staged.write_text("kiwi kiwi kiwi fig", encoding="utf-8")
    staged.rename(inbox / "sub" / "renamed.txt")  # renamed in
    (inbox / "sub" / "marked.txt").write_text("plum", encoding="utf-8")
    (inbox / "sub" / "marked.txt.done").write_text("", encoding="utf-8")  # marker
    (inbox / "copy-of-plain.txt").write_text("apple apple pear", encoding="utf-8")  # same content
    (inbox / "bad.txt").write_text("this one says FAIL-THIS-FILE", encoding="utf-8")
    (inbox / "growing.txt.part").write_text("not yet", encoding="utf-8")  # ignored
    (inbox / ".hidden").write_text("never", encoding="utf-8")  # ignored


async def test_files_become_results_exactly_once_with_the_http_side_telling(
    start_emulator: StartEmulator, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    batch = await start_emulator()
    settings = daemon_settings_for(batch, azurite, tmp_path / "state", "daemon-flow")
    folders = folders_under(tmp_path)
    async with running_daemon(settings, folders) as daemon:
        url = daemon.state.listen_url
        assert url is not None and url.startswith("http://127.0.0.1:")
        status, ready = await get_json(f"{url}/readyz")
        assert status == 200 and ready["ready"] is True
        await anyio.to_thread.run_sync(arrive, folders.inbox, tmp_path / "scratch")

        async def all_finished() -> dict[str, str] | None:
            done = await anyio.to_thread.run_sync(files_under, folders.done)
            failed = await anyio.to_thread.run_sync(files_under, folders.failed)
            return {**done, **failed} if len(done) + len(failed) >= 6 else None  # 5 inputs + 1 error file

        await wait_async(all_finished, "every input in done/ or failed/", 90)
        done = await anyio.to_thread.run_sync(files_under, folders.done)
        failed = await anyio.to_thread.run_sync(files_under, folders.failed)
        assert sorted(done) == ["copy-of-plain.txt", "plain.txt", "sub/marked.txt", "sub/renamed.txt"]
        assert sorted(failed) == ["bad.txt", "bad.txt.error.json"]
        error = json.loads(failed["bad.txt.error.json"])
        assert error["path"] == "bad.txt" and error["reason"] == "the file's task failed"
        remaining = await anyio.to_thread.run_sync(files_under, folders.inbox)
        assert sorted(remaining) == [".hidden", "growing.txt.part"]  # nothing left in .claimed/ either

        results = await anyio.to_thread.run_sync(files_under, folders.outbox)
        outputs = {Path(name).name for name in results if "_OUTPUT" in name}
        # One result per input that ran; of the two files with the same content (claimed in either
        # order), only the first ran, and the duplicate was not run again.
        twins = {"plain_OUTPUT.txt", "copy-of-plain_OUTPUT.txt"}
        assert outputs - twins == {"renamed_OUTPUT.txt", "marked_OUTPUT.txt"} and len(outputs & twins) == 1
        summaries = [json.loads(text) for name, text in results.items() if name.endswith("summary.json")]
        paths = sorted(entry["path"] for summary in summaries for entry in summary["files"])
        assert (
            len(paths) == 4 and paths[0] == "bad.txt" and paths[2:] == ["sub/marked.txt", "sub/renamed.txt"]
        )
        assert paths[1] in ("copy-of-plain.txt", "plain.txt")
        for name in results:
            if name.endswith("renamed_OUTPUT.txt"):
                assert name.split("/")[1:] == ["sub", "renamed_OUTPUT.txt"]  # relative path kept
                assert "kiwi:\t3" in results[name]

        async def runs_finished() -> list[dict[str, Any]] | None:
            # A batch's files reach done/ and failed/ just before the batch is recorded as finished.
            status, runs = await get_json(f"{url}/v1/runs")
            assert status == 200
            finished = [run for run in runs["runs"] if run["state"] == "finished"]
            return finished if sum(run["files"] for run in finished) >= 4 else None

        finished = await wait_async(runs_finished, "the batches to be recorded as finished", 30)
        assert sum(run["files"] for run in finished) == 4
        assert {run["run_id"] for run in finished} == {summary["run_id"] for summary in summaries}
        failed_run = next(run for run in finished if run["outcome"] == "failed")
        status, detail = await get_json(f"{url}/v1/runs/{failed_run['run_id']}")
        assert status == 200 and detail["failures"] == [
            {"path": "bad.txt", "reason": "the file's task failed"}
        ]
        assert (await get_json(f"{url}/v1/runs/nosuchrun"))[0] == 404

        status, metrics = await get_json(f"{url}/metrics")
        assert status == 200
        assert 'topn_inputs_received_total{source="watch"}' in metrics or 'source="rescan"' in metrics
        assert "topn_inputs_duplicate_total 1.0" in metrics
        assert "topn_inputs_failed_total 1.0" in metrics
        assert "topn_input_latency_seconds_count 4.0" in metrics
        assert 'topn_build_info{version="' in metrics
        # Requests by operation and the status that answered them (the emulator's codes).
        assert 'topn_batch_requests_total{operation="create_job",status="201"}' in metrics
        assert 'topn_batch_requests_total{operation="create_task_collection",status="200"}' in metrics
        assert 'topn_storage_requests_total{operation="upload_blob",status="201"}' in metrics
        for name in ("plain", "renamed", "bad.txt", finished[0]["run_id"]):
            assert name not in metrics  # no file names or run ids as labels

        # A batch submitted through the API, from files already on disk.
        outside = tmp_path / "elsewhere" / "api.txt"
        await anyio.to_thread.run_sync(lambda: outside.parent.mkdir())
        await anyio.Path(outside).write_text("cherry cherry", encoding="utf-8")
        status, accepted = await get_json(f"{url}/v1/runs", "POST", {"paths": [str(outside)]})
        assert status == 202
        run_id = accepted["run_id"]

        async def api_run_finished() -> bool:
            return (await get_json(f"{url}/v1/runs/{run_id}"))[1].get("state") == "finished"

        await wait_async(api_run_finished, "the API batch to finish", 60)
        assert await anyio.Path(outside).is_file()  # the submitter's file is left where it was
        api_output = folders.outbox / run_id / "api_OUTPUT.txt"
        assert "cherry:\t2" in await anyio.Path(api_output).read_text(encoding="utf-8")
        assert (await get_json(f"{url}/v1/runs", "POST", {"paths": ["relative.txt"]}))[0] == 400

        status, page = await get_json(f"{url}/")
        assert status == 200 and "Recent runs" in page and "kiwi (3)" in page
    assert daemon.state.draining and not daemon.state.ready
