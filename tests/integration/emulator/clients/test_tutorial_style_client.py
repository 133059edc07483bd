"""A client in the seed tutorial's style (azure-batch 1.1.0 + azure-storage 0.33.0, api-version
2016-07-01.3.1) runs the tutorial's workflow against the emulator and Azurite, unmodified."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import BatchEndpoint, StorageEndpoint
from tests.integration.emulator.clients import venvs
from tests.integration.emulator.clients.conftest import (
    HERE,
    client_env,
    client_python,
    run_client,
    unique,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Inputs written for this test; no ties among each file's top three words.
INPUTS = {
    "a.txt": "apple apple apple pear pear fig\n",
    "b.txt": "wave wave wave wave, tide tide tide; moon moon. star\n",
    "c.txt": "one two two three three three\n",
}
EXPECTED_OUTPUTS = {
    "a_OUTPUT.txt": "apple:\t3\npear:\t2\nfig:\t1\nTask: topNtask0\n",
    "b_OUTPUT.txt": "wave:\t4\ntide:\t3\nmoon:\t2\nTask: topNtask1\n",
    "c_OUTPUT.txt": "three:\t3\ntwo:\t2\none:\t1\nTask: topNtask2\n",
}


async def test_tutorial_style_client_runs_the_workflow(
    batch_emulator: BatchEndpoint, azurite: StorageEndpoint, tmp_path: Path
) -> None:
    python = await client_python(venvs.TUTORIAL)
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    for name, text in INPUTS.items():
        (inputs / name).write_text(text, encoding="utf-8")
    pool_id = unique("tutorial-pool")
    env = client_env(
        batch_emulator,
        STORAGE_CONNECTION_STRING=azurite.connection_string,
        POOL_ID=pool_id,
        JOB_ID=unique("tutorial-job"),
        CONTAINER_PREFIX=unique("tut"),
        INPUT_DIR=str(inputs),
        OUTPUT_DIR=str(outputs),
    )
    report = await run_client([str(python), str(HERE / "tutorial" / "tutorial_client.py")], env)

    # The tutorial's own workflow: old node agent SKU list, targetDedicated, blobSource, runElevated.
    assert report["image"] == {
        "nodeAgentSkuId": "batch.node.ubuntu 18.04",
        "offer": "UbuntuServer",
        "sku": "18.04-LTS",
    }
    assert report["addCollectionStatuses"] == ["success"] * 3
    assert report["exitCodes"] == {"topNtask0": 0, "topNtask1": 0, "topNtask2": 0}
    assert {path.name: path.read_text(encoding="utf-8") for path in outputs.iterdir()} == EXPECTED_OUTPUTS
    assert report["pool"]["targetDedicated"] == 1
    assert report["pool"]["currentDedicated"] == 1
    assert report["pool"]["runElevated"] is True
    assert report["pool"]["blobSources"] == [
        f"{azurite.endpoint}/{env['CONTAINER_PREFIX']}-application/count_words_task.py"
    ]
    assert report["startTaskStdout"] == "start task ran as PoolAdmin\n"

    # The other calls azure-batch 1.1.0 offers (it has no task counts: api-version 2016-07-01).
    assert report["poolListIds"] == [pool_id]
    assert report["nodeCount"] == 1
    assert {"startup/stdout.txt", "shared/count_words_task.py", "startup/wd/count_words_task.py"} <= set(
        report["nodeFileNames"]
    )
    assert report["jobPriority"] == 100
    assert report["completedTaskPages"] == [["topNtask0", "topNtask1"], ["topNtask2", "echo"]]
    assert {"stdout.txt", "stderr.txt"} <= set(report["taskFileNames"])
    assert report["echoStdout"] == "tutorial done\n"
    assert report["resized"] == {"targetDedicated": 2, "currentDedicated": 2}
    assert report["deletedJob"] == "JobNotFound"
    assert report["deletedPool"] == "PoolNotFound"
