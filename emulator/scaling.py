"""Nodes leaving a pool on a resize, as the resize's deallocation option says.

`requeue` kills running tasks and requeues them; `terminate` kills them and completes them as
ended; `taskcompletion` and `retaineddata` let them finish (the node takes no new task meanwhile)
and remove the node after. The emulator keeps no task data past a task's end, so `retaineddata`
waits exactly as `taskcompletion` does.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import anyio

from emulator.model import Node, Pool, PoolState
from emulator.state import Account

DRAINING_OPTIONS = ("taskcompletion", "retaineddata")


async def release_nodes(account: Account, pool: Pool, leaving: Sequence[Node], option: str) -> bool:
    """Take `leaving` out of the pool; with a draining option, only once their tasks have ended.

    Returns whether the pool is still active (it may be deleted while nodes drain).
    """
    draining = [node for node in leaving if option in DRAINING_OPTIONS and node.running_tasks]
    for node in leaving:
        if node in draining:
            node.scheduling_enabled = False  # no new task goes to a node that is on its way out
        else:
            account.remove_node(node, option)
    while True:
        # Take the event before checking, so a task that ends in between still wakes us.
        wake = account.wake_event()
        if pool.state != PoolState.ACTIVE or not any(node.running_tasks for node in draining):
            break
        await wake.wait()
    for node in draining:
        account.remove_node(node)  # its tasks have ended (or the pool is being deleted)
    if leaving:
        await anyio.to_thread.run_sync(_remove_folders, [node.root for node in leaving])
        for node in leaving:
            pool.nodes.pop(node.id, None)
    return pool.state == PoolState.ACTIVE


def _remove_folders(folders: list[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
