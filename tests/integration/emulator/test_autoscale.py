"""Pool autoscale with the real azure.batch.aio.BatchClient: create, enable, evaluate, disable, scaling.

The emulators run with `--time-scale`, so the service's 30 s samples (visible 30 s later),
5-minute evaluation interval and 30 s enable limit pass in a fraction of the time.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import anyio
import pytest
from azure.batch import models
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError, ResourceExistsError

from tests.conftest import StartEmulator
from tests.integration.emulator.conftest import UBUNTU, batch_client, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

# 5 minutes of service time pass in 1.5 s: samples every 0.15 s, visible 0.15 s later.
FAST = 0.005
# For the API tests: the 30 s enable limit lasts 1.5 s, long enough to hit it on purpose.
API_SCALE = 0.05
FIVE_MINUTES = timedelta(minutes=5)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def autoscale_pool(pool_id: str, formula: str, **extra: object) -> models.BatchPoolCreateOptions:
    return models.BatchPoolCreateOptions(
        id=pool_id,
        vm_size="standard_d2s_v3",
        virtual_machine_configuration=UBUNTU,
        enable_auto_scale=True,
        auto_scale_formula=formula,
        auto_scale_evaluation_interval=FIVE_MINUTES,
        **extra,  # type: ignore[arg-type]
    )


def fixed_pool(pool_id: str, nodes: int = 0) -> models.BatchPoolCreateOptions:
    return models.BatchPoolCreateOptions(
        id=pool_id,
        vm_size="standard_d2s_v3",
        virtual_machine_configuration=UBUNTU,
        target_dedicated_nodes=nodes,
    )


async def node_count(client: BatchClient, pool_id: str) -> int:
    return len([node async for node in client.list_nodes(pool_id)])


async def wait_steady(client: BatchClient, pool_id: str) -> models.BatchPool:
    seen: list[models.BatchPool] = []

    async def steady() -> bool:
        seen.append(await client.get_pool(pool_id))
        return bool(seen[-1].allocation_state == models.AllocationState.STEADY)

    await wait_for(steady, what=f"pool {pool_id} to be steady")
    return seen[-1]


# Scale to the number of tasks waiting to run (not those running), at most 2 nodes.
WAITING_TASKS = """
// no samples yet (right after creation): no nodes
waiting = $ActiveTasks.GetSamplePercent(TimeInterval_Minute) > 0 ? max($ActiveTasks.GetSample(1)) : 0;
$TargetDedicatedNodes = min(2, waiting);
"""


async def run_one_long_task(client: BatchClient, pool_id: str, deallocation: str) -> str:
    """An autoscale pool grows for one waiting task, then shrinks to 0 while the task still runs."""
    formula = WAITING_TASKS + f"$NodeDeallocationOption = {deallocation};"
    await client.create_pool(autoscale_pool(pool_id, formula))
    pool = await client.get_pool(pool_id)
    assert pool.enable_auto_scale is True and pool.auto_scale_evaluation_interval == FIVE_MINUTES
    assert pool.auto_scale_run is not None and pool.auto_scale_run.error is None
    assert pool.auto_scale_run.results.startswith("$TargetDedicatedNodes=0;$TargetLowPriorityNodes=0;")
    job_id = unique("job")
    await client.create_job(
        models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id))
    )
    await client.create_task(job_id, models.BatchTaskCreateOptions(id="long", command_line="sleep 8"))

    async def running() -> bool:
        return bool((await client.get_task(job_id, "long")).state == models.BatchTaskState.RUNNING)

    await wait_for(running, timeout_s=20, what="the pool to grow and run the task")
    # Once the task runs nothing waits, so the next evaluation sets the target to 0 under it.
    await wait_for(
        lambda: _target_is(client, pool_id, 0), timeout_s=20, what="an evaluation to set the target to 0"
    )
    return job_id


async def _target_is(client: BatchClient, pool_id: str, target: int) -> bool:
    return bool((await client.get_pool(pool_id)).target_dedicated_nodes == target)


async def test_taskcompletion_shrinks_only_after_the_running_task_ends(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(["--time-scale", str(FAST)])
    pool_id = unique("pool")
    async with batch_client(emulator) as client:
        job_id = await run_one_long_task(client, pool_id, "taskcompletion")
        pool = await client.get_pool(pool_id)
        assert pool.auto_scale_run.results.startswith(
            "$TargetDedicatedNodes=0;$TargetLowPriorityNodes=0;$NodeDeallocationOption=taskcompletion;"
        )
        # The node stays (taking no new task) while its task runs.
        nodes = [node async for node in client.list_nodes(pool_id)]
        assert len(nodes) == 1 and nodes[0].scheduling_state == models.SchedulingState.DISABLED
        assert (await client.get_task(job_id, "long")).state == models.BatchTaskState.RUNNING

        async def task_done() -> bool:
            return bool((await client.get_task(job_id, "long")).state == models.BatchTaskState.COMPLETED)

        await wait_for(task_done, timeout_s=20, what="the task to finish")
        task = await client.get_task(job_id, "long")
        assert task.execution_info.result == models.BatchTaskExecutionResult.SUCCESS
        assert task.execution_info.requeue_count == 0
        await wait_for(lambda: _no_nodes(client, pool_id), timeout_s=20, what="the drained node to leave")
        await (await client.begin_delete_pool(pool_id, polling_interval=0.1)).result()


async def _no_nodes(client: BatchClient, pool_id: str) -> bool:
    return await node_count(client, pool_id) == 0


async def test_requeue_kills_the_running_task_and_requeues_it(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(["--time-scale", str(FAST)])
    pool_id = unique("pool")
    async with batch_client(emulator) as client:
        job_id = await run_one_long_task(client, pool_id, "requeue")

        async def requeued() -> bool:
            task = await client.get_task(job_id, "long")
            return bool(task.execution_info.requeue_count >= 1)

        await wait_for(requeued, timeout_s=20, what="the running task to be requeued by the scale-down")
        await (await client.begin_delete_pool(pool_id, polling_interval=0.1)).result()


async def test_enable_evaluate_disable_and_their_errors(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(["--time-scale", str(API_SCALE)])
    pool_id = unique("pool")
    async with batch_client(emulator) as client:
        await client.create_pool(fixed_pool(pool_id))
        await wait_steady(client, pool_id)
        with pytest.raises(ResourceExistsError) as not_enabled:
            await client.evaluate_pool_auto_scale(
                pool_id,
                models.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes = 1;"),
            )
        assert not_enabled.value.error.code == "OperationInvalidForCurrentState"

        with pytest.raises(HttpResponseError) as syntax:
            await client.enable_pool_auto_scale(
                pool_id,
                models.BatchPoolEnableAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes = (1;"),
            )
        assert (syntax.value.status_code, syntax.value.error.code) == (400, "AutoScalingFormulaSyntaxError")
        syntax_detail = {detail.code: detail.message for detail in syntax.value.error.details}
        assert syntax_detail["Message"] == "Line 1, Col 27: expected ')' but found ';'"
        for body, code in [
            (
                {
                    "auto_scale_formula": "$TargetDedicatedNodes = 1;",
                    "auto_scale_evaluation_interval": timedelta(minutes=4),
                },
                "InvalidPropertyValue",
            ),
            ({"auto_scale_evaluation_interval": FIVE_MINUTES}, "MissingRequiredProperty"),
        ]:
            with pytest.raises(HttpResponseError) as refused:
                await client.enable_pool_auto_scale(pool_id, models.BatchPoolEnableAutoScaleOptions(**body))
            assert (refused.value.status_code, refused.value.error.code) == (400, code)

        await client.enable_pool_auto_scale(
            pool_id,
            models.BatchPoolEnableAutoScaleOptions(
                auto_scale_formula="$TargetDedicatedNodes = 1;", auto_scale_evaluation_interval=FIVE_MINUTES
            ),
        )
        # A second enable within 30 s (scaled) is refused with the service's code.
        with pytest.raises(HttpResponseError) as throttled:
            await client.enable_pool_auto_scale(
                pool_id,
                models.BatchPoolEnableAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes = 2;"),
            )
        assert (throttled.value.status_code, throttled.value.error.code) == (
            409,
            "AutoScaleTooManyRequestsToEnable",
        )

        await wait_for(lambda: _nodes_are(client, pool_id, 1), what="the enabled formula to add a node")
        pool = await wait_steady(client, pool_id)
        assert pool.enable_auto_scale is True and pool.auto_scale_formula == "$TargetDedicatedNodes = 1;"
        assert pool.auto_scale_run.results == (
            "$TargetDedicatedNodes=1;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue"
        )
        with pytest.raises(ResourceExistsError) as resize_refused:
            await client.begin_resize_pool(pool_id, models.BatchPoolResizeOptions(target_dedicated_nodes=3))
        assert resize_refused.value.error.code == "OperationInvalidForCurrentState"

        # Evaluating never changes the pool; errors come back inside the run (200).
        run = await client.evaluate_pool_auto_scale(
            pool_id,
            models.BatchPoolEvaluateAutoScaleOptions(
                auto_scale_formula="span = 3 * TimeInterval_Minute; $TargetLowPriorityNodes = 2; $x = 2.5;"
            ),
        )
        assert run.error is None
        assert run.results == (
            "$TargetDedicatedNodes=1;$TargetLowPriorityNodes=2;$NodeDeallocationOption=requeue;$x=2.5;span=00:03:00"
        )
        for formula, code, named in [
            (
                "$TargetDedicatedNodes = avg($CPUPercent.GetSample(10));",
                "AutoScaleFeatureNotEmulated",
                "$CPUPercent",
            ),
            (
                "$TargetDedicatedNodes = percentile($PendingTasks.GetSample(1), 50);",
                "AutoScaleFeatureNotEmulated",
                "percentile()",
            ),
            ("$TargetDedicatedNodes = nodes;", "FormulaEvaluationError", "nodes is not defined"),
            ("$TargetDedicatedNodes = 1 +;", "AutoScalingFormulaSyntaxError", "Line 1, Col 28"),
            (
                "$TargetDedicatedNodes = avg($PendingTasks.GetSample(TimeInterval_Minute * 10, 95));",
                "InsufficientSampleData",
                "Insufficient data from data set: $PendingTasks wanted 95%",
            ),
        ]:
            failed = await client.evaluate_pool_auto_scale(
                pool_id, models.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula=formula)
            )
            assert failed.error is not None and failed.error.code == code, formula
            assert named in failed.error.error_values[0].value, failed.error.error_values[0].value
            assert failed.results.startswith("$TargetDedicatedNodes=1;"), (
                "an error leaves the targets as they are"
            )
        assert (await client.get_pool(pool_id)).target_low_priority_nodes == 0

        # After the limit has passed, a new formula that names an unemulated variable fails in the run.
        await anyio.sleep(30 * API_SCALE)
        await client.enable_pool_auto_scale(
            pool_id,
            models.BatchPoolEnableAutoScaleOptions(
                auto_scale_formula="$TargetDedicatedNodes = $CPUPercent.GetSample(1);",
                auto_scale_evaluation_interval=FIVE_MINUTES,
            ),
        )

        async def run_failed() -> bool:
            run = (await client.get_pool(pool_id)).auto_scale_run
            return bool(run is not None and run.error is not None)

        await wait_for(run_failed, what="the new formula's run")
        pool = await client.get_pool(pool_id)
        assert pool.auto_scale_run.error.code == "AutoScaleFeatureNotEmulated"
        assert "$CPUPercent" in pool.auto_scale_run.error.error_values[0].value
        assert pool.target_dedicated_nodes == 1 and pool.current_dedicated_nodes == 1

        await client.disable_pool_auto_scale(pool_id)
        pool = await client.get_pool(pool_id)
        assert pool.enable_auto_scale is False and pool.auto_scale_formula is None
        await (
            await client.begin_resize_pool(pool_id, models.BatchPoolResizeOptions(target_dedicated_nodes=0))
        ).result()
        await (await client.begin_delete_pool(pool_id, polling_interval=0.1)).result()


async def _nodes_are(client: BatchClient, pool_id: str, count: int) -> bool:
    return await node_count(client, pool_id) == count


async def test_create_pool_autoscale_properties_are_checked(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(["--time-scale", str(API_SCALE)])
    async with batch_client(emulator) as client:
        for options, code, name in [
            (
                autoscale_pool(unique("p"), "$TargetDedicatedNodes = 1;", target_dedicated_nodes=1),
                "InvalidPropertyValue",
                "targetDedicatedNodes",
            ),
            (
                models.BatchPoolCreateOptions(
                    id=unique("p"),
                    vm_size="standard_d2s_v3",
                    virtual_machine_configuration=UBUNTU,
                    enable_auto_scale=True,
                    auto_scale_formula="$TargetDedicatedNodes = 1;",
                    auto_scale_evaluation_interval=timedelta(minutes=1),
                ),
                "InvalidPropertyValue",
                "autoScaleEvaluationInterval",
            ),
            (
                models.BatchPoolCreateOptions(
                    id=unique("p"),
                    vm_size="standard_d2s_v3",
                    virtual_machine_configuration=UBUNTU,
                    enable_auto_scale=True,
                ),
                "MissingRequiredProperty",
                "autoScaleFormula",
            ),
            (
                autoscale_pool(unique("p"), "$TargetDedicatedNodes = min(1,;"),
                "AutoScalingFormulaSyntaxError",
                "autoScaleFormula",
            ),
        ]:
            with pytest.raises(HttpResponseError) as refused:
                await client.create_pool(options)
            assert (refused.value.status_code, refused.value.error.code) == (400, code)
            assert {detail.code: detail.message for detail in refused.value.error.details}[
                "PropertyName"
            ] == name
