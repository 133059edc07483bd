"""Fast unit tests for two run-level rules that only end-to-end tests used to check (issue 10, point 13):
the run's top N merges every file's full counts (not each file's top N), and a resume uploads only
the inputs its journal does not hold (never everything again)."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import anyio

from orchestrator import naming
from orchestrator.azure.clients import Clients, RequestCounter
from orchestrator.inputs import InputFile
from orchestrator.journal import Journal
from orchestrator.results import FileCounts
from orchestrator.run import collecting, preparing
from orchestrator.run.context import RunLedger, journal_inputs, new_run_context
from orchestrator.run.pipeline import settings_snapshot
from orchestrator.run.summary import run_summary
from orchestrator.service.poolkeeper import PoolKeeper
from tests.unit.orchestrator.test_run_stages import SETTINGS

RUN_ID = "20261206t010203z-abcdef"


class RecordingBlobs:
    """A blob service that records uploads and lists what it holds (the staging code's only calls here)."""

    def __init__(self) -> None:
        self.uploaded: list[str] = []
        self.stored: dict[str, bytes] = {}  # blob name -> the MD5 Storage holds

    def get_container_client(self, container: str) -> Any:
        stored = self.stored

        class Container:
            async def list_blobs(self, name_starts_with: str = "") -> Any:
                for name, md5 in sorted(stored.items()):
                    if name.startswith(name_starts_with):
                        yield SimpleNamespace(name=name, content_settings=SimpleNamespace(content_md5=md5))

        return Container()

    def get_blob_client(self, container: str, blob: str) -> Any:
        service = self

        class Blob:
            async def upload_blob(self, data: Any, **kwargs: Any) -> None:
                service.uploaded.append(blob)

            async def delete_blob(self) -> None:
                pass

        return Blob()


class FakeClients:
    def __init__(self) -> None:
        self.requests = RequestCounter()
        self.blob_service = RecordingBlobs()


def run_context(inputs: list[InputFile], clients: FakeClients, resume: Any = None) -> Any:
    return new_run_context(
        SETTINGS,
        inputs,
        cast(Clients, clients),
        Path("/r"),
        pool=PoolKeeper(SETTINGS, cast(Clients, clients)),
        run_id=RUN_ID,
        journal=None,
        progress=None,
        max_files_per_task=1,
        resume=resume,
        started=time.monotonic(),
    )


def test_the_run_top_merges_every_files_full_counts_not_their_tops() -> None:
    # "shared" is 12th in each file (below every file's top 10) yet first in the run.
    texts = [
        [f"f{number}w{word}" for word in range(11) for _ in range(3)] + ["shared"] * 2 for number in range(3)
    ]
    inputs = [InputFile(Path(f"/in/f{number}.txt"), f"f{number}.txt", 1) for number in range(3)]
    run = run_context(inputs, FakeClients())
    ledger = RunLedger()
    for index, tokens in enumerate(texts):
        counts = list(Counter(tokens).items())
        collecting._add_success(
            run, ledger, index, f"t{index:06d}", FileCounts(len(tokens), len(counts), 0, counts)
        )
    reference: Counter[str] = Counter()
    for tokens in texts:  # an independent reference: Counter.update in input order, then most_common
        reference.update(tokens)
    summary = run_summary(run, ledger, "SUCCEEDED")
    assert summary["top"][0] == ["shared", 6]
    assert summary["top"] == [list(pair) for pair in reference.most_common(SETTINGS.run.top)]


def test_a_resume_uploads_only_what_the_journal_does_not_hold(tmp_path: Path) -> None:
    inputs = []
    for number in range(3):
        path = tmp_path / f"f{number}.txt"
        path.write_text(f"text {number}\n", encoding="utf-8")
        inputs.append(InputFile(path, path.name, path.stat().st_size))

    async def staged_on_resume() -> list[str]:
        first = run_context(inputs, FakeClients())
        async with await Journal.open(tmp_path / "journal.sqlite3") as journal:
            await journal.create_run(
                RUN_ID, settings_snapshot(SETTINGS), journal_inputs(first), out_dir=tmp_path
            )
            for item in inputs[:2]:  # the first run uploaded two files before it was killed
                md5 = preparing.file_md5_hex(item.path)
                assert md5 is not None
                await journal.record_upload(
                    RUN_ID, item.relpath, md5, naming.input_blob_name(RUN_ID, item.relpath)
                )
            record = await journal.load_run(RUN_ID)
        clients = FakeClients()
        for item in inputs[:2]:  # what the first run's uploads left in Storage
            clients.blob_service.stored[naming.input_blob_name(RUN_ID, item.relpath)] = hashlib.md5(
                item.path.read_bytes(), usedforsecurity=False
            ).digest()
        resumed = run_context(inputs, clients, resume=record)
        staged = await preparing._stage_inputs(resumed, RunLedger())
        assert [item.relpath for item in staged] == ["f0.txt", "f1.txt", "f2.txt"]
        return clients.blob_service.uploaded

    assert anyio.run(staged_on_resume) == [naming.input_blob_name(RUN_ID, "f2.txt")]


def test_a_renamed_duplicates_summary_entry_names_its_source_path() -> None:
    inputs = [
        InputFile(Path("/a/notes.txt"), "notes.txt", 1),
        InputFile(Path("/b/notes.txt"), "notes~2.txt", 1),
    ]
    run = run_context(inputs, FakeClients())
    ledger = RunLedger()
    for index in range(2):
        collecting._add_success(run, ledger, index, f"t{index:06d}", FileCounts(1, 1, 0, [("word", 1)]))
    files = {entry["path"]: entry for entry in run_summary(run, ledger, "SUCCEEDED")["files"]}
    assert files["notes~2.txt"]["source"] == "/b/notes.txt"
    assert "source" not in files["notes.txt"]
