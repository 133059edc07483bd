"""Runs task attempts and start tasks as local processes, and brings pool nodes up.

A node is a folder with the Linux on-node layout; its "image" is this Python environment, exposed
to tasks as `python`/`python3` through wrapper scripts at the front of their PATH.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import structlog

from emulator.faults import FaultInjector
from emulator.model import (
    WALL_CLOCK_EXCEEDED,
    AllocationState,
    AttemptOutcome,
    FailureInfo,
    Node,
    NodeState,
    Pool,
    PoolState,
    StartTaskInfo,
    Task,
    TaskResult,
    outcome_of_exit,
    retries_left,
)
from emulator.quota import admit_nodes, allocation_failed_error
from emulator.scaling import release_nodes
from emulator.state import Account
from emulator.transfer import TransferError, download_resource_files, upload_output_files
from emulator.wire import utc_now

log = structlog.get_logger("emulator")

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NODE_FOLDERS = ("startup/wd", "shared", "workitems", "fsmounts", "applications", "volatile")
# Exit status reported for a process the emulator killed (128 + SIGKILL, as a Linux shell reports it).
KILLED_EXIT_CODE = 128 + signal.SIGKILL
INJECTED_TASK_FAILURE = "emulator: injected task failure\n"
INJECTED_START_TASK_FAILURE = "emulator: injected start task failure\n"
# How long a rebooting node stays `rebooting` before its start task runs again.
REBOOT_DURATION_S = 0.2


def write_python_wrappers(bin_dir: Path, interpreter: str = sys.executable) -> Path:
    """`python` and `python3` scripts that run this interpreter (a symlink would lose the venv)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):
        wrapper = bin_dir / name
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(interpreter)} "$@"\n')
        wrapper.chmod(0o755)
    return bin_dir


@dataclass(frozen=True)
class NodeContext:
    """What the environment of anything running on a node derives from."""

    account_name: str
    account_url: str
    pool_id: str
    node_id: str
    node_root: Path
    is_dedicated: bool
    python_bin_dir: Path


def _trusted_certificates() -> dict[str, str]:
    """The CA file the emulator trusts, trusted on its nodes too: a node image trusts what its host does
    (the Entra ID tests serve Storage over HTTPS with a certificate of their own)."""
    ca_file = os.environ.get("SSL_CERT_FILE")
    return {"SSL_CERT_FILE": ca_file} if ca_file else {}


def task_environment(
    context: NodeContext,
    task_dir: Path,
    working_dir: Path,
    settings: Sequence[Mapping[str, Any]],
    job_id: str | None = None,
    task_id: str | None = None,
    identity: str = "PoolNonAdmin",
) -> dict[str, str]:
    """The environment a Linux Batch node gives a task; nothing leaks in from the emulator's own."""
    root = context.node_root
    env = {
        "PATH": f"{context.python_bin_dir}:{SYSTEM_PATH}:{root / 'shared'}:{working_dir}",
        "HOME": str(working_dir),
        "PWD": str(working_dir),
        "USER": "_azbatch",
        "LANG": "C.UTF-8",
        **_trusted_certificates(),
        "AZ_BATCH_ACCOUNT_NAME": context.account_name,
        "AZ_BATCH_ACCOUNT_URL": context.account_url.rstrip("/") + "/",
        "AZ_BATCH_POOL_ID": context.pool_id,
        "AZ_BATCH_NODE_ID": context.node_id,
        "AZ_BATCH_NODE_IS_DEDICATED": "true" if context.is_dedicated else "false",
        "AZ_BATCH_NODE_ROOT_DIR": str(root),
        "AZ_BATCH_NODE_SHARED_DIR": str(root / "shared"),
        "AZ_BATCH_NODE_STARTUP_DIR": str(root / "startup"),
        "AZ_BATCH_NODE_STARTUP_WORKING_DIR": str(root / "startup" / "wd"),
        "AZ_BATCH_NODE_MOUNTS_DIR": str(root / "fsmounts"),
        "AZ_BATCH_TASK_DIR": str(task_dir),
        "AZ_BATCH_TASK_WORKING_DIR": str(working_dir),
        "AZ_BATCH_CERTIFICATES_DIR": str(task_dir / "certs"),
        "AZ_BATCH_TASK_USER": "_azbatch",
        "AZ_BATCH_TASK_USER_IDENTITY": identity,
        "AZ_BATCH_TASK_RESERVED_EPHEMERAL_DISK_SPACE_BYTES": "1000000",
    }
    if job_id is not None:
        env["AZ_BATCH_JOB_ID"] = job_id
    if task_id is not None:
        env["AZ_BATCH_TASK_ID"] = task_id
    for setting in settings:
        env[str(setting["name"])] = str(setting.get("value", ""))
    return env


def user_identity_name(spec: Mapping[str, Any], default_scope: str) -> str:
    """`AZ_BATCH_TASK_USER_IDENTITY` from an auto-user spec (PoolAdmin, TaskNonAdmin, ...)."""
    auto_user = (spec.get("userIdentity") or {}).get("autoUser") or {}
    scope = str(auto_user.get("scope", default_scope)).lower()
    admin = str(auto_user.get("elevationLevel", "nonadmin")).lower() == "admin"
    return ("Pool" if scope == "pool" else "Task") + ("Admin" if admin else "NonAdmin")


def node_id_for(pool_id: str, index: int, created: str) -> str:
    """A node id in the service's `tvm-<n>_<i>-<timestamp>` style, stable for a pool."""
    return f"tvm-{zlib.crc32(pool_id.lower().encode()):010d}_{index + 1}-{created}"


@dataclass(frozen=True)
class ProcessResult:
    exit_code: int | None
    timed_out: bool = False
    launch_failure: FailureInfo | None = None


class Runner:
    """Turns dispatched attempts into processes and reports their outcomes to the account."""

    def __init__(
        self,
        account: Account,
        faults: FaultInjector,
        session: aiohttp.ClientSession,
        account_url: str,
        python_bin_dir: Path,
        max_processes: int,
    ) -> None:
        self.account = account
        self.faults = faults
        self.session = session
        self.account_url = account_url
        self.python_bin_dir = python_bin_dir
        self.process_limiter = anyio.CapacityLimiter(max_processes)
        # Threads that may be inside fork/exec at once; more than the cores only adds contention.
        self.spawn_limiter = anyio.CapacityLimiter(max(2, min(max_processes, os.cpu_count() or 2)))
        self.preemptions = 0

    def context(self, node: Node) -> NodeContext:
        return NodeContext(
            self.account.name,
            self.account_url,
            node.pool_id,
            node.id,
            node.root,
            node.is_dedicated,
            self.python_bin_dir,
        )

    async def run_process(
        self,
        command_line: str,
        working_dir: Path,
        env: dict[str, str],
        log_dir: Path,
        deadline: float,
        preempt: bool,
    ) -> ProcessResult:
        """Run a command without a shell, stdout/stderr into `log_dir`; kill it at `deadline` (monotonic)."""
        try:
            argv = shlex.split(command_line)
        except ValueError as exc:
            return ProcessResult(
                None, launch_failure=_launch_failure("CommandLaunchFailed", f"bad command line: {exc}")
            )
        if not argv:
            return ProcessResult(
                None, launch_failure=_launch_failure("CommandLaunchFailed", "the command line is empty")
            )
        async with self.process_limiter:
            # Spawning runs in a worker thread: fork/exec releases the GIL, so the event loop keeps
            # serving requests meanwhile. Shielded, so a process that did start is always waited for.
            with anyio.CancelScope(shield=True):
                try:
                    process = await anyio.to_thread.run_sync(
                        _spawn, argv, working_dir, env, log_dir, limiter=self.spawn_limiter
                    )
                except FileNotFoundError:
                    _append(log_dir / "stderr.txt", f"emulator: program not found: {argv[0]}\n")
                    return ProcessResult(
                        None,
                        launch_failure=_launch_failure("CommandProgramNotFound", f"{argv[0]} was not found"),
                    )
                except OSError as exc:
                    _append(log_dir / "stderr.txt", f"emulator: cannot start {argv[0]}: {exc.strerror}\n")
                    return ProcessResult(
                        None,
                        launch_failure=_launch_failure("CommandLaunchFailed", f"{argv[0]}: {exc.strerror}"),
                    )
            try:
                if preempt:
                    _kill_group(process.pid)
                remaining = deadline - anyio.current_time()
                with anyio.move_on_after(max(remaining, 0.0)) as timer:
                    await _wait_for_exit(process)
                if timer.cancelled_caught:
                    _kill_group(process.pid)
                    with anyio.CancelScope(shield=True):
                        await _wait_for_exit(process)
                    return ProcessResult(KILLED_EXIT_CODE, timed_out=True)
            finally:
                if process.returncode is None:
                    # Cancelled from outside (terminate, requeue, shutdown): never leave the process behind.
                    _kill_group(process.pid)
                    with anyio.CancelScope(shield=True):
                        await _wait_for_exit(process)
            returncode = process.returncode
            assert returncode is not None
            return ProcessResult(returncode if returncode >= 0 else 128 - returncode)

    async def run_attempt(self, task: Task, node: Node, attempt: int) -> None:
        """One attempt of a task on a node: resource files, process, output files, then report."""
        if not self.account.is_current(task, attempt):
            return  # ended or requeued between dispatch and start
        with anyio.CancelScope() as scope:
            self.account.task_stoppers[task] = scope.cancel
            try:
                outcome = await self._attempt(task, node)
            except Exception:
                # A bug or an unexpected OS error fails this task; it must never stop the scheduler.
                log.exception("task.attempt_crashed", job_id=task.job_id, task_id=task.id, node_id=node.id)
                outcome = AttemptOutcome(None, EMULATOR_FAILURE, retryable=False)
            if outcome is not None:
                self.account.finish_attempt(task, attempt, outcome)

    async def _attempt(self, task: Task, node: Node) -> AttemptOutcome | None:
        started = anyio.current_time()
        task_dir = node.root / task.directory
        working_dir = task_dir / "wd"
        working_dir.mkdir(parents=True, exist_ok=True)
        spec = task.spec
        job = self.account.jobs.get(task.job_id.lower())
        common = (job.spec.get("commonEnvironmentSettings") or []) if job is not None else []
        env = task_environment(
            self.context(node),
            task_dir,
            working_dir,
            [*common, *(spec.get("environmentSettings") or [])],
            job_id=task.job_id,
            task_id=task.id,
            identity=user_identity_name(spec, "task"),
        )
        try:
            # The wall clock runs from the start of the attempt, downloads included.
            with anyio.move_on_after(task.max_wall_clock_s) as download_timer:
                await download_resource_files(self.session, spec.get("resourceFiles") or [], working_dir)
        except TransferError as exc:
            (task_dir / "stderr.txt").write_text(f"emulator: {exc.failure.message}\n")
            return AttemptOutcome(None, exc.failure, retryable=False)
        if download_timer.cancelled_caught:
            return AttemptOutcome(None, WALL_CLOCK_EXCEEDED, retryable=False)
        preempt = self.faults.should_preempt(task.job_id, task.id)
        if self.faults.task_fails(task.command_line):
            (task_dir / "stdout.txt").write_bytes(b"")
            (task_dir / "stderr.txt").write_text(INJECTED_TASK_FAILURE)
            outcome = outcome_of_exit(self.faults.settings.task_fail_exit_code)
        else:
            result = await self.run_process(
                task.command_line, working_dir, env, task_dir, started + task.max_wall_clock_s, preempt
            )
            if preempt:
                self.preemptions += 1
                log.info("task.preempted", job_id=task.job_id, task_id=task.id, node_id=node.id)
                self.account.requeue(task)
                return None
            if result.launch_failure is not None:
                return AttemptOutcome(None, result.launch_failure, retryable=False)
            if result.timed_out:
                return AttemptOutcome(result.exit_code, WALL_CLOCK_EXCEEDED, retryable=False)
            assert result.exit_code is not None
            outcome = outcome_of_exit(result.exit_code)
        final = outcome.succeeded or not retries_left(task.retry_count, task.max_task_retry_count)
        if final and spec.get("outputFiles"):
            try:
                await upload_output_files(spec["outputFiles"], working_dir, task_dir, outcome.succeeded)
            except TransferError as exc:
                return AttemptOutcome(outcome.exit_code, exc.failure, retryable=False)
        return outcome

    # -- pools, nodes and start tasks --------------------------------------------------------
    async def provision_pool(self, pool: Pool, allocation_delay_s: float) -> None:
        """Create the pool's nodes (after the configured delay) and run their start tasks."""
        try:
            await self._provision(pool, allocation_delay_s)
        except Exception:
            log.exception("pool.allocation_crashed", pool_id=pool.id)
            pool.resize_errors.append(
                {"code": "AllocationFailed", "message": "The emulator could not create nodes."}
            )
            pool.allocation_state, pool.allocation_state_time = AllocationState.STEADY, utc_now()

    async def _provision(self, pool: Pool, allocation_delay_s: float) -> None:
        await anyio.sleep(allocation_delay_s)
        await self._reach_targets(pool)

    async def resize_pool(self, pool: Pool) -> None:
        """Grow or shrink the pool to the targets in its spec (set by Account.begin_resize_pool)."""
        try:
            await self._reach_targets(pool)
        except Exception:
            log.exception("pool.allocation_crashed", pool_id=pool.id)
            pool.resize_errors.append(
                {"code": "Unknown", "message": "The emulator could not resize the pool."}
            )
            pool.allocation_state, pool.allocation_state_time = AllocationState.STEADY, utc_now()

    async def _reach_targets(self, pool: Pool) -> None:
        if pool.state != PoolState.ACTIVE or self.account.pools.get(pool.id.lower()) is not pool:
            return
        targets = {
            True: int(pool.spec.get("targetDedicatedNodes", 0)),
            False: int(pool.spec.get("targetLowPriorityNodes", 0)),
        }
        leaving: list[Node] = []
        missing: list[bool] = []
        for dedicated, target in targets.items():
            current = [node for node in pool.nodes.values() if node.is_dedicated == dedicated]
            # Shrinking takes idle nodes first, then the newest, as the service prefers.
            current.sort(key=lambda node: (node.state == NodeState.RUNNING, -node.index))
            leaving.extend(current[: max(len(current) - target, 0)])
            missing.extend([dedicated] * max(target - len(current), 0))
        if not await release_nodes(self.account, pool, leaving, pool.deallocation_option):
            return  # deleted while nodes drained
        if missing and self.faults.allocation_fails():
            pool.resize_errors.append(allocation_failed_error(missing))
            missing = []
        nodes = self._create_nodes(
            pool, admit_nodes(self.account.quota, self.account.pools.values(), pool, missing)
        )
        start_task = pool.spec.get("startTask")
        wait = bool(start_task and start_task.get("waitForSuccess", False))
        for node in nodes:
            # Every node leaves `starting` before the pool reports `steady`, as on the service.
            if start_task:
                node.start_task_info = StartTaskInfo(start_time=utc_now())
            self.account.set_node_state(node, NodeState.WAITING_FOR_START_TASK if wait else NodeState.IDLE)
        async with anyio.create_task_group() as group:
            if start_task:
                for node in nodes:
                    group.start_soon(self._bring_up, node, start_task, wait)
            now = utc_now()
            pool.allocation_state, pool.allocation_state_time = AllocationState.STEADY, now
            pool.touch(now)
            log.info("pool.resized", pool_id=pool.id, nodes=len(pool.nodes))

    async def reboot_node(self, pool: Pool, node: Node) -> None:
        """Finish a reboot (Account.begin_reboot_node): boot again, then run the pool's current start task."""
        try:
            await anyio.sleep(REBOOT_DURATION_S)
            if node.state != NodeState.REBOOTING or pool.nodes.get(node.id) is not node:
                return  # removed (pool deleted or shrunk) while it rebooted
            node.last_boot_time = utc_now()
            # The start task as the pool has it now: an update_pool since the node joined applies.
            start_task = pool.spec.get("startTask")
            wait = bool(start_task and start_task.get("waitForSuccess", False))
            node.start_task_info = StartTaskInfo(start_time=utc_now()) if start_task else None
            self.account.set_node_state(node, NodeState.WAITING_FOR_START_TASK if wait else NodeState.IDLE)
            if start_task:
                await self._bring_up(node, start_task, wait)
        except Exception:
            log.exception("node.reboot_crashed", pool_id=node.pool_id, node_id=node.id)
            self.account.set_node_state(node, NodeState.START_TASK_FAILED)

    def _create_nodes(self, pool: Pool, dedicated_flags: list[bool]) -> list[Node]:
        """New node folders and records (`creating`, then `starting`); indices continue the pool's."""
        stamp = utc_now().strftime("%Y%m%dt%H%M%Sz")
        first_index = max((node.index for node in pool.nodes.values()), default=-1) + 1
        nodes: list[Node] = []
        for offset, dedicated in enumerate(dedicated_flags):
            index = first_index + offset
            node_id = node_id_for(pool.id, index, stamp)
            root = self.account.node_dir(pool, node_id)
            for folder in NODE_FOLDERS:
                (root / folder).mkdir(parents=True, exist_ok=True)
            node = Node(node_id, pool.id, index, dedicated, root, pool.task_slots_per_node, utc_now())
            node.state_time = node.created
            pool.nodes[node_id] = node
            nodes.append(node)
            log.info(
                "node.state_changed", pool_id=pool.id, node_id=node_id, from_state=None, to_state=node.state
            )
        for node in nodes:
            self.account.set_node_state(node, NodeState.STARTING)
        return nodes

    async def _bring_up(self, node: Node, start_task: Mapping[str, Any], wait: bool) -> None:
        try:
            await self._bring_up_node(node, start_task, wait)
        except Exception:
            log.exception("node.start_crashed", pool_id=node.pool_id, node_id=node.id)
            if node.start_task_info is not None:
                node.start_task_info.state, node.start_task_info.failure = "completed", EMULATOR_FAILURE
                node.start_task_info.result = TaskResult.FAILURE
            self.account.set_node_state(node, NodeState.START_TASK_FAILED)

    async def _bring_up_node(self, node: Node, start_task: Mapping[str, Any], wait: bool) -> None:
        """Run the start task; with `waitForSuccess` its result decides idle or starttaskfailed."""
        with anyio.CancelScope() as scope:
            self.account.node_stoppers[node] = scope.cancel
            succeeded = await self._run_start_task(node, start_task)
            self.account.node_stoppers.pop(node, None)
            if wait and node.state == NodeState.WAITING_FOR_START_TASK:
                self.account.set_node_state(
                    node, NodeState.IDLE if succeeded else NodeState.START_TASK_FAILED
                )

    async def _run_start_task(self, node: Node, start_task: Mapping[str, Any]) -> bool:
        info = node.start_task_info
        assert info is not None
        startup = node.root / "startup"
        working_dir = startup / "wd"
        env = task_environment(
            self.context(node),
            startup,
            working_dir,
            start_task.get("environmentSettings") or [],
            identity=user_identity_name(start_task, "pool"),
        )
        max_retries = int(start_task.get("maxTaskRetryCount", 0))
        while True:
            info.state, info.start_time, info.end_time = "running", utc_now(), None
            if info.retry_count:
                info.last_retry_time = info.start_time
            outcome = await self._start_task_attempt(node, start_task, working_dir, env)
            info.end_time = utc_now()
            info.exit_code, info.failure = outcome.exit_code, outcome.failure
            if outcome.succeeded or not outcome.retryable or not retries_left(info.retry_count, max_retries):
                break
            info.retry_count += 1
        info.state = "completed"
        info.result = TaskResult.SUCCESS if outcome.succeeded else TaskResult.FAILURE
        log.info(
            "node.start_task_completed",
            pool_id=node.pool_id,
            node_id=node.id,
            exit_code=outcome.exit_code,
            result=info.result,
            failure_code=outcome.failure.code if outcome.failure else None,
            retry_count=info.retry_count,
        )
        return outcome.succeeded

    async def _start_task_attempt(
        self, node: Node, start_task: Mapping[str, Any], working_dir: Path, env: dict[str, str]
    ) -> AttemptOutcome:
        startup = working_dir.parent
        try:
            await download_resource_files(self.session, start_task.get("resourceFiles") or [], working_dir)
        except TransferError as exc:
            (startup / "stderr.txt").write_text(f"emulator: {exc.failure.message}\n")
            return AttemptOutcome(None, exc.failure, retryable=False)
        if self.faults.start_task_fails(node.index):
            (startup / "stdout.txt").write_bytes(b"")
            (startup / "stderr.txt").write_text(INJECTED_START_TASK_FAILURE)
            return outcome_of_exit(1)
        result = await self.run_process(
            str(start_task["commandLine"]), working_dir, env, startup, float("inf"), preempt=False
        )
        if result.launch_failure is not None:
            return AttemptOutcome(None, result.launch_failure, retryable=False)
        assert result.exit_code is not None
        return outcome_of_exit(result.exit_code)

    async def remove_pool(self, pool: Pool, delay_s: float = 0.0) -> None:
        """Finish a pool delete after `delay_s` (`deleting` meanwhile, as on the service):
        drop its folders, then the pool itself (404 from then on)."""
        try:
            await anyio.sleep(delay_s)
            await anyio.to_thread.run_sync(shutil.rmtree, self.account.root / pool.id, True)
        finally:
            self.account.forget_pool(pool)

    async def remove_job(self, job_id: str) -> None:
        """Finish a job delete: drop the job's folders on every node, then the job."""
        job = self.account.jobs.get(job_id.lower())
        if job is None:
            return
        folders = [
            node.root / "workitems" / job.id
            for pool in self.account.pools.values()
            for node in pool.nodes.values()
        ]

        def remove_all() -> None:
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)

        try:
            await anyio.to_thread.run_sync(remove_all)
        finally:
            self.account.forget_job(job)


EMULATOR_FAILURE = FailureInfo("servererror", "Unknown", "The emulator could not run this task; see its log.")


def _launch_failure(code: str, detail: str) -> FailureInfo:
    return FailureInfo("usererror", code, f"The task command could not be started: {detail}")


def _spawn(argv: list[str], working_dir: Path, env: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    """Start a task process (blocking; runs in a worker thread): no shell, no stdin, own session."""
    with (log_dir / "stdout.txt").open("wb") as stdout, (log_dir / "stderr.txt").open("wb") as stderr:
        return subprocess.Popen(
            argv,
            cwd=working_dir,
            env=env,
            stdin=subprocess.DEVNULL,  # a node task has no terminal to read from
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # so the whole group (/bin/sh -c children too) can be killed
        )


def _append(path: Path, text: str) -> None:
    with path.open("a") as file:
        file.write(text)


async def _wait_for_exit(process: subprocess.Popen[bytes]) -> None:
    """Wait without a thread: a pidfd becomes readable when the process exits (Linux 5.3+)."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        pidfd = None  # no pidfd support (or already reaped): fall back to polling
    try:
        while process.poll() is None:
            if pidfd is not None:
                await anyio.wait_readable(pidfd)
            else:
                await anyio.sleep(0.02)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _kill_group(pid: int) -> None:
    """Kill the process and everything it started (`/bin/sh -c` children included)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
