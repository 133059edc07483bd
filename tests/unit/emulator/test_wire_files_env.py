"""Wire helpers, file ranges and listings, output-file planning, validation and the task environment."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator import files, validation
from emulator.model import exit_job_action, outcome_of_exit
from emulator.runner import NodeContext, task_environment, user_identity_name
from emulator.state import Account
from emulator.transfer import condition_applies, plan_uploads, resolve_inside
from emulator.wire import (
    ServiceError,
    format_time,
    is_valid_id,
    new_etag,
    parse_duration,
    parse_time,
    strip_query,
)


def test_durations_and_times() -> None:
    assert parse_duration("PT15M00S") == 900
    assert parse_duration("PT02H00M00S") == 7200
    assert parse_duration("P7D") == 7 * 86400
    assert parse_duration("P1DT1H1M1.5S") == 86400 + 3600 + 61.5
    assert parse_duration("P10675199DT2H48M5.4775807S") == float("inf")
    for bad in ("", "P", "PT", "15M", "PT-1S", "P1DT"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    moment = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert format_time(moment) == "2026-01-02T03:04:05.123456Z"
    assert parse_time("2026-01-02T03:04:05.1234567Z") == moment
    assert parse_time(format_time(moment)) == moment


def test_ids_etags_and_urls() -> None:
    assert is_valid_id("a-b_C9") and is_valid_id("x" * 64)
    assert not any(is_valid_id(value) for value in ("", "x" * 65, "a b", "a/b", "ü", 5, None))
    first, second = new_etag(), new_etag()
    assert first != second and first.startswith("0x")
    assert strip_query("http://h/c/b?sv=1&sig=secret") == "http://h/c/b"


def test_ranges() -> None:
    assert files.parse_range(None, 10) is None
    assert files.parse_range("bytes=0-4", 10) == (0, 4)
    assert files.parse_range("bytes=5-", 10) == (5, 9)
    assert files.parse_range("bytes=-3", 10) == (7, 9)
    assert files.parse_range("bytes=2-100", 10) == (2, 9)
    for bad in ("bytes=9-2", "items=0-1", "bytes=20-30", "bytes=a-b"):
        with pytest.raises(ServiceError) as error:
            files.parse_range(bad, 10)
        assert error.value.status == 416


def test_file_paths_stay_inside(tmp_path: Path) -> None:
    (tmp_path / "wd").mkdir()
    (tmp_path / "stdout.txt").write_text("x")
    assert files.resolve_file(tmp_path, "stdout.txt") == tmp_path / "stdout.txt"
    for bad in ("../etc/passwd", "/etc/passwd", "", "missing.txt"):
        with pytest.raises(ServiceError) as error:
            files.resolve_file(tmp_path, bad)
        assert error.value.code == "FileNotFound"
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("not yours")
    (tmp_path / "wd" / "link.txt").symlink_to(outside)
    with pytest.raises(ServiceError):
        files.resolve_file(tmp_path, "wd/link.txt")
    outside.unlink()
    (tmp_path / "wd" / "link.txt").unlink()
    names = [entry.name for entry in files.list_entries(tmp_path, recursive=False)]
    assert names == ["stdout.txt", "wd"]
    assert resolve_inside(tmp_path, "a/b.txt") == tmp_path / "a" / "b.txt"
    with pytest.raises(ValueError):
        resolve_inside(tmp_path, "../x")


def test_output_plans_follow_the_service_naming_rules(tmp_path: Path) -> None:
    task_dir = tmp_path / "task"
    working_dir = task_dir / "wd"
    (working_dir / "out" / "deep").mkdir(parents=True)
    for name in ("out/a.txt", "out/deep/b.txt", "out/.hidden", "single.bin"):
        (working_dir / name).write_text(name)
    (task_dir / "stdout.txt").write_text("o")
    (task_dir / "stderr.txt").write_text("e")

    def plan(pattern: str, path: str | None) -> list[tuple[str, str]]:
        return [
            (p.source.relative_to(task_dir).as_posix(), p.blob_name)
            for p in plan_uploads(pattern, path, working_dir)
        ]

    assert plan("single.bin", "dest/name.bin") == [("wd/single.bin", "dest/name.bin")]
    assert plan("single.bin", None) == [("wd/single.bin", "single.bin")]
    assert plan("missing.txt", "x") == []
    assert plan("../std*.txt", "logs") == [
        ("stderr.txt", "logs/stderr.txt"),
        ("stdout.txt", "logs/stdout.txt"),
    ]
    assert plan("out/**/*.txt", "r") == [("wd/out/a.txt", "r/a.txt"), ("wd/out/deep/b.txt", "r/deep/b.txt")]
    assert condition_applies("tasksuccess", True) and not condition_applies("tasksuccess", False)
    assert condition_applies("taskfailure", False) and not condition_applies("taskfailure", True)
    assert condition_applies("taskcompletion", True) and condition_applies("TaskCompletion", False)


def test_task_validation_codes() -> None:
    job = {"onTaskFailure": "noaction"}
    spec = validation.validate_task({"id": "t", "commandLine": "x"}, job)
    assert spec["constraints"]["maxTaskRetryCount"] == 0 and spec["requiredSlots"] == 1
    inherited = validation.validate_task(
        {"id": "t", "commandLine": "x"}, {"constraints": {"maxTaskRetryCount": 3}}
    )
    assert inherited["constraints"]["maxTaskRetryCount"] == 3
    cases = {
        "MissingRequiredProperty": [{"commandLine": "x"}, {"id": "t"}],
        "InvalidPropertyValue": [
            {"id": "t t", "commandLine": "x"},
            {"id": "t", "commandLine": "x", "resourceFiles": [{"httpUrl": "http://h", "filePath": "../up"}]},
            {
                "id": "t",
                "commandLine": "x",
                "resourceFiles": [{"httpUrl": "http://h", "storageContainerUrl": "u"}],
            },
            {"id": "t", "commandLine": "x", "constraints": {"maxWallClockTime": "soon"}},
            {"id": "t", "commandLine": "x", "constraints": {"maxTaskRetryCount": -2}},
            {"id": "t", "commandLine": "x", "dependsOn": {"taskIds": ["a"]}},
            {"id": "t", "commandLine": "x", "exitConditions": {"default": {"jobAction": "terminate"}}},
            {
                "id": "t",
                "commandLine": "x",
                "outputFiles": [
                    {
                        "filePattern": "*",
                        "destination": {"container": {"containerUrl": "u"}},
                        "uploadOptions": {"uploadCondition": "sometimes"},
                    }
                ],
            },
        ],
    }
    for code, bodies in cases.items():
        for body in bodies:
            with pytest.raises(ServiceError) as error:
                validation.validate_task(body, job)
            assert error.value.code == code, body
            assert error.value.status == 400


def test_pool_and_job_validation_fill_defaults() -> None:
    pool = validation.validate_pool(
        {
            "id": "p",
            "vmSize": "s",
            "virtualMachineConfiguration": {"nodeAgentSKUId": "n", "imageReference": {"offer": "o"}},
            "startTask": {"commandLine": "x"},
        }
    )
    assert pool["taskSlotsPerNode"] == 1 and pool["targetDedicatedNodes"] == 0
    assert pool["startTask"]["waitForSuccess"] is True and pool["startTask"]["maxTaskRetryCount"] == 0
    with pytest.raises(ServiceError) as error:
        validation.validate_pool({"id": "p", "vmSize": "s"})
    assert (error.value.code, error.value.values["PropertyName"]) == (
        "MissingRequiredProperty",
        "virtualMachineConfiguration",
    )
    job = validation.validate_job({"id": "j", "poolInfo": {"poolId": "p"}})
    assert job["onAllTasksComplete"] == "noaction" and job["priority"] == 0
    with pytest.raises(ServiceError) as job_error:
        validation.validate_job(
            {"id": "j", "poolInfo": {"poolId": "p"}, "onAllTasksComplete": "TerminateJob"}
        )
    assert job_error.value.code == "InvalidPropertyValue"


def test_task_environment_is_the_linux_node_layout() -> None:
    root = Path("/nodes/p/n1")
    context = NodeContext("acct", "http://127.0.0.1:9", "p", "n1", root, False, Path("/py/bin"))
    task_dir = root / "workitems/j/job-1/t"
    env = task_environment(
        context,
        task_dir,
        task_dir / "wd",
        [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}, {"name": "B"}],
        job_id="j",
        task_id="t",
        identity=user_identity_name(
            {"userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "admin"}}}, "task"
        ),
    )
    assert env["PATH"].split(":")[0] == "/py/bin"
    assert env["PATH"].split(":")[-2:] == ["/nodes/p/n1/shared", "/nodes/p/n1/workitems/j/job-1/t/wd"]
    assert env["AZ_BATCH_NODE_IS_DEDICATED"] == "false"
    assert env["AZ_BATCH_ACCOUNT_URL"] == "http://127.0.0.1:9/"
    assert env["AZ_BATCH_TASK_USER_IDENTITY"] == "PoolAdmin"
    assert (env["A"], env["B"]) == ("2", "")
    assert env["AZ_BATCH_JOB_ID"] == "j" and env["AZ_BATCH_TASK_ID"] == "t"
    start_env = task_environment(context, root / "startup", root / "startup/wd", [])
    assert "AZ_BATCH_JOB_ID" not in start_env and "AZ_BATCH_TASK_ID" not in start_env
    assert user_identity_name({}, "task") == "TaskNonAdmin"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 300) | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)
OPTIONAL_TASK_KEYS = [
    "resourceFiles",
    "outputFiles",
    "environmentSettings",
    "constraints",
    "requiredSlots",
    "exitConditions",
    "userIdentity",
    "displayName",
]
task_bodies = st.fixed_dictionaries(
    {"id": st.just("t"), "commandLine": st.just("x")},
    optional={key: json_values for key in OPTIONAL_TASK_KEYS},
)


@settings(max_examples=300, deadline=None)
@given(
    task_bodies,
    st.sampled_from(["noaction", "performexitoptionsjobaction"]),
)
def test_any_task_body_is_accepted_or_rejected_with_a_service_error(
    body: dict[str, object], mode: str
) -> None:
    """Whatever JSON arrives, validation answers with the service's codes, never a crash (500)."""
    try:
        spec = validation.validate_task(body, {"onTaskFailure": mode})
    except ServiceError as error:
        assert error.status == 400
        assert error.code in {"MissingRequiredProperty", "InvalidPropertyValue"}
        return
    assert isinstance(spec["id"], str) and isinstance(spec["commandLine"], str)
    assert isinstance(spec["requiredSlots"], int)
    # What the runtime reads from an accepted spec must not crash either.
    account = Account("acct", Path("/nonexistent"))
    job = account.add_job({"id": "j", "poolInfo": {"poolId": "p"}, "onTaskFailure": mode})
    task = account.add_task(job, spec)
    assert task.max_task_retry_count >= -1
    exit_job_action(spec, outcome_of_exit(3))
    user_identity_name(spec, "task")


pool_bodies = st.fixed_dictionaries(
    {
        "id": st.just("p"),
        "vmSize": st.just("s"),
        "virtualMachineConfiguration": st.one_of(
            json_values, st.just({"nodeAgentSKUId": "n", "imageReference": {"offer": "o"}})
        ),
    },
    optional={
        key: json_values
        for key in [
            "targetDedicatedNodes",
            "targetLowPriorityNodes",
            "taskSlotsPerNode",
            "resizeTimeout",
            "taskSchedulingPolicy",
            "startTask",
            "enableAutoScale",
            "metadata",
        ]
    },
)
job_bodies = st.fixed_dictionaries(
    {"id": st.just("j"), "poolInfo": st.one_of(json_values, st.just({"poolId": "p"}))},
    optional={
        key: json_values
        for key in [
            "priority",
            "maxParallelTasks",
            "constraints",
            "onAllTasksComplete",
            "onTaskFailure",
            "commonEnvironmentSettings",
            "usesTaskDependencies",
            "jobManagerTask",
        ]
    },
)


@settings(max_examples=300, deadline=None)
@given(pool_bodies, job_bodies)
def test_any_pool_or_job_body_is_accepted_or_rejected_with_a_service_error(
    pool_body: dict[str, object], job_body: dict[str, object]
) -> None:
    account = Account("acct", Path("/nonexistent"))
    try:
        pool = account.add_pool(validation.validate_pool(pool_body))
        assert pool.task_slots_per_node >= 1 and pool.fill_type in ("spread", "pack")
        start_task = pool.spec.get("startTask")
        if start_task:
            user_identity_name(start_task, "pool")
    except ServiceError as error:
        assert error.status == 400
    try:
        job = account.add_job(validation.validate_job(job_body))
        account.update_job(
            job, validation.validate_job_update({k: v for k, v in job_body.items() if k != "id"}), True
        )
        assert job.priority in range(-1000, 1001)
        assert isinstance(job.max_parallel_tasks, int)
    except ServiceError as error:
        assert error.status in (400, 409)


def test_log_events_never_carry_a_sas_signature() -> None:
    from emulator.__main__ import redact_secrets

    url = "http://127.0.0.1:10000/devstoreaccount1/c/b?sv=2025-01-01&sp=r&sig=c2VjcmV0%2Bc2ln%3D&st=x"
    event = redact_secrets(None, "info", {"event": "x", "error": f"GET {url} failed", "count": 3})
    assert "c2VjcmV0" not in json.dumps(event)
    assert event["error"] == f"GET {url.split('sig=')[0]}sig=REDACTED&st=x failed"
    assert event["count"] == 3
