"""SIGKILL while units' packs are uploaded, then `topn resume` (issue 13, point 5 with packs).

Up to four small files per unit, so each unit of two or more goes up as one pack blob. The run is
killed at its second pack upload; before the resume, one input of a unit whose pack the journal
has (and whose task was not added) is rewritten. The resume must keep every journalled pack of
unchanged inputs (no second upload), pack that unit again with the new bytes, and end with exact
results (checked against the independent reference) and one task per unit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator import naming
from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.e2e.fault_support import check_summary, job_tasks, write_corpus
from tests.e2e.test_crash_resume import (
    assert_no_partial_files,
    count_after,
    crash_environment,
    load_record,
    per_input_counts,
    run_id_in,
    run_until,
)

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

FILES = 24
FILES_PER_UNIT = 4


def _pack_upload(event: dict[str, Any]) -> bool:
    return event["event"] == "blob.uploaded" and str(event["blob"]).endswith(".pack")


async def test_a_run_killed_while_packs_are_uploaded_resumes_to_exact_results_without_repacking(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    texts = write_corpus(tmp_path / "in", FILES, seed=31)
    env = crash_environment(
        batch_emulator,
        azurite,
        tmp_path,
        TOPN_RUN_MAX_FILES_PER_TASK=str(FILES_PER_UNIT),
        TOPN_RUN_UPLOAD_CONCURRENCY="1",
    )
    first, killed = await run_until(
        ["run", "in", "--out", "out", "--json", "--log-level", "debug"],
        tmp_path,
        env,
        count_after(2, _pack_upload),
        yield_cpu=True,
    )
    assert killed and first.exit_code == -9, (first.exit_code, first.stderr[-2000:])
    run_id = run_id_in(first)
    record = await load_record(tmp_path / ".topn", run_id)
    assert record.state == "PREPARING" and not record.is_finished
    units = sorted(record.inputs_by_task)
    # The first units ramp up from one file (run/split_plan.py); a unit of one file has no pack.
    unit_of = {item.relpath: task_id for task_id in units for item in record.inputs_by_task[task_id]}
    packed_units = {task_id for task_id in units if len(record.inputs_by_task[task_id]) >= 2}
    assert len(packed_units) >= 3
    packs_at_kill = {upload.blob_name for upload in record.uploads.values() if upload.extent is not None}
    assert packs_at_kill
    for relpath, upload in record.uploads.items():
        in_pack = unit_of[relpath] in packed_units
        assert (upload.extent is not None) == in_pack, relpath
        assert upload.blob_name == naming.unit_pack_blob(unit_of[relpath]) or not in_pack, relpath

    # Rewrite one input of a journalled pack whose task is not in the job yet: its unit is packed again.
    repacked_unit = next(
        task_id
        for task_id in units
        if naming.unit_pack_blob(task_id) in packs_at_kill and task_id not in record.submitted_task_ids
    )
    changed = record.inputs_by_task[repacked_unit][1].relpath
    texts[changed] = "changed changed words after the kill\n"
    (tmp_path / "in" / changed).write_text(texts[changed], encoding="utf-8")

    second, _ = await run_until(["resume", run_id, "--json", "--log-level", "debug"], tmp_path, env, None)
    assert second.exit_code == 0, second.stderr[-3000:]
    summary = second.summary()
    assert check_summary(summary, texts) == []
    assert_no_partial_files(tmp_path / "out", sorted(texts))

    again = per_input_counts(second.events(), "blob.uploaded", "blob")
    kept = packs_at_kill - {naming.unit_pack_blob(repacked_unit)}
    assert not kept & set(again), again  # journalled packs of unchanged inputs: not sent again
    assert again.get(naming.unit_pack_blob(repacked_unit)) == 1
    # Only the inputs of one-file units went up as blobs of their own, and no pack more than twice
    # (once more only when its upload landed just before the kill, before the journal had it).
    uploads = per_input_counts(first.events() + second.events(), "blob.uploaded", "blob", skipped=False)
    # (One sent just before the kill may be logged only by the resume, which finds it: skipped.)
    every_upload = per_input_counts(first.events() + second.events(), "blob.uploaded", "blob")
    alone = {name for name in every_upload if name.startswith("runs/")}
    assert len(alone) == len(units) - len(packed_units), every_upload
    assert {naming.unit_pack_blob(task_id) for task_id in packed_units} <= set(uploads)
    assert all(count <= 2 for count in uploads.values()), uploads
    final = await load_record(tmp_path / ".topn", run_id)
    assert final.state == "SUCCEEDED"
    assert {relpath for relpath, upload in final.uploads.items() if upload.extent is not None} == {
        relpath for relpath, task_id in unit_of.items() if task_id in packed_units
    }

    tasks = await job_tasks(
        batch_emulator.endpoint, batch_emulator.account_name, batch_emulator.account_key, f"topn-{run_id}"
    )
    assert len({task.id for task in tasks}) == len(tasks) == len(units)  # one task per unit, none twice
    assert {task.execution_info.result for task in tasks} == {"success"}
