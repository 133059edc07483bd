"""`python -m emulator`: run the local Azure Batch service until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import structlog
from aiohttp import web

from emulator.auth import decode_account_key
from emulator.autoscale import AUTOSCALER, Autoscaler
from emulator.entra import EntraSettings
from emulator.faults import FaultInjector, FaultSettings
from emulator.jobclock import JobWallClock
from emulator.quota import Quotas
from emulator.rest import Limits, Services
from emulator.runner import Runner, write_python_wrappers
from emulator.scheduler import Scheduler
from emulator.server import build_app
from emulator.state import Account
from emulator.wire import redact

# Documented local defaults (the same as orchestrator.local). Not secrets: they open a loopback emulator only.
DEFAULT_ACCOUNT_NAME = "topnlocal"
DEFAULT_ACCOUNT_KEY = (
    "Zym2mVjNK3UFfWmczha6+QroyGvPwo8CwiNdjvw6UuPd9UYiWHEWzwdOxXtd4H10lyMdrmmGsJxwO8FDTlJkVQ=="
)
HOST = "127.0.0.1"

log = structlog.get_logger("emulator")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m emulator",
        description="Local Azure Batch data-plane emulator (loopback only). See docs/emulator.md.",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port on 127.0.0.1; 0 picks a free one (default)"
    )
    parser.add_argument(
        "--account-name", default=DEFAULT_ACCOUNT_NAME, help="Batch account name (default topnlocal)"
    )
    parser.add_argument(
        "--account-key", default=DEFAULT_ACCOUNT_KEY, help="base64 account key (documented default)"
    )
    parser.add_argument("--root", type=Path, default=Path(".topn/emulator"), help="folder for node folders")
    parser.add_argument(
        "--nodes-max-processes",
        type=int,
        default=os.cpu_count() or 1,
        help="task processes at once (default: CPUs)",
    )
    parser.add_argument(
        "--max-tasks-per-request", type=int, default=100, help="addtaskcollection limit (413 above)"
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=1_048_576, help="request body limit (413 above)"
    )
    parser.add_argument(
        "--max-page-size",
        type=int,
        default=1000,
        help="items per list page at most, whatever maxresults asks (clients must follow next links)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply autoscale periods (30 s samples, evaluation intervals) and jobs' maxWallClockTime "
        "by F, e.g. 0.01 in tests",
    )
    entra = parser.add_argument_group("HTTPS and Microsoft Entra ID (off by default)")
    entra.add_argument("--tls-cert", type=Path, default=None, help="serve HTTPS with this PEM certificate")
    entra.add_argument("--tls-key", type=Path, default=None, help="the certificate's PEM private key")
    entra.add_argument(
        "--entra-token-key-file",
        type=Path,
        default=None,
        help="also accept HS256 bearer tokens signed with this file's bytes (audience: the Batch resource)",
    )
    entra.add_argument(
        "--entra-denied-operations",
        default="",
        help="comma-separated operations a bearer token's identity may not do (403), e.g. list_jobs",
    )
    parser.add_argument(
        "--refuse-start-task-failed-reboot",
        action="store_true",
        help="answer 409 to a reboot of a starttaskfailed node (as the service may)",
    )
    parser.add_argument(
        "--task-counts-lag-s",
        type=float,
        default=0.0,
        help="serve job task counts as they were this long ago (the service's counts can lag)",
    )
    parser.add_argument(
        "--pool-delete-delay-s",
        type=float,
        default=0.0,
        help="a deleted pool stays deleting this long (409 PoolBeingDeleted to an add of its id)",
    )
    quotas = parser.add_argument_group("account quotas (none by default)")
    quotas.add_argument("--max-active-jobs", type=int, default=None, help="active jobs (+ job schedules)")
    quotas.add_argument("--max-dedicated-cores", type=int, default=None, help="dedicated cores of all pools")
    quotas.add_argument("--max-low-priority-cores", type=int, default=None, help="low-priority cores")
    quotas.add_argument("--max-pools", type=int, default=None, help="pools (PoolQuotaReached above)")
    quotas.add_argument(
        "--max-spot-cores",
        type=int,
        default=None,
        help="a user-subscription account: low-priority nodes are Spot VMs, limited to this many cores",
    )
    faults = parser.add_argument_group("fault injection (off by default, deterministic for a seed)")
    faults.add_argument("--fault-seed", type=int, default=0)
    faults.add_argument(
        "--fault-503", type=float, default=0.0, help="fraction of requests answered 503 ServerBusy"
    )
    faults.add_argument("--fault-500", type=float, default=0.0, help="fraction answered 500 InternalError")
    faults.add_argument("--fault-429", type=float, default=0.0, help="fraction answered 429 with Retry-After")
    faults.add_argument(
        "--fault-retry-after-s", type=float, default=1.0, help="Retry-After of the 429s (seconds)"
    )
    faults.add_argument(
        "--pool-allocation-delay-s", type=float, default=0.0, help="delay before nodes appear"
    )
    faults.add_argument(
        "--fault-start-task-failures", type=int, default=0, help="first N nodes of a pool fail"
    )
    faults.add_argument("--fault-preempt", type=float, default=0.0, help="fraction of tasks preempted once")
    faults.add_argument(
        "--fault-task-fail-match", default=None, help="tasks whose command line contains TEXT fail"
    )
    faults.add_argument("--fault-task-fail-exit-code", type=int, default=42)
    faults.add_argument(
        "--fault-slow",
        action="append",
        default=[],
        metavar="OPERATION=SECONDS",
        help="hold each request of OPERATION (e.g. update_job) this long before doing it; repeatable",
    )
    faults.add_argument(
        "--fault-allocation-failed",
        type=int,
        default=0,
        help="the next N pool creations or resizes that add nodes get none (resize error AllocationFailed)",
    )
    return parser.parse_args(argv)


def redact_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """No event ever carries a SAS signature, even inside an unexpected exception's text."""
    return {key: redact(value) if isinstance(value, str) else value for key, value in event.items()}


def configure_logging(level: str) -> None:
    """structlog JSON lines on stderr; stdout carries only the start line."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def fault_settings(args: argparse.Namespace) -> FaultSettings:
    return FaultSettings(
        seed=args.fault_seed,
        fraction_503=args.fault_503,
        fraction_500=args.fault_500,
        fraction_429=args.fault_429,
        retry_after_s=args.fault_retry_after_s,
        pool_allocation_delay_s=args.pool_allocation_delay_s,
        start_task_failures=args.fault_start_task_failures,
        preempt_fraction=args.fault_preempt,
        task_fail_match=args.fault_task_fail_match,
        task_fail_exit_code=args.fault_task_fail_exit_code,
        allocation_failures=args.fault_allocation_failed,
        slow_operations=tuple(_slow_operation(text) for text in args.fault_slow),
    )


def _slow_operation(text: str) -> tuple[str, float]:
    """`update_job=2.5` -> ("update_job", 2.5); a malformed value is a usage error naming the flag."""
    operation, _, seconds = text.partition("=")
    try:
        return operation.strip(), float(seconds)
    except ValueError:
        raise SystemExit(f"--fault-slow wants OPERATION=SECONDS, got {text!r}") from None


def usage_problems(args: argparse.Namespace, faults: FaultSettings) -> list[str]:
    problems = faults.problems()
    if not 0 <= args.port <= 65535:
        problems.append(f"--port must be from 0 to 65535, got {args.port}")
    if args.nodes_max_processes < 1:
        problems.append("--nodes-max-processes must be at least 1")
    if args.max_tasks_per_request < 1 or args.max_body_bytes < 1024:
        problems.append("--max-tasks-per-request must be >= 1 and --max-body-bytes >= 1024")
    if not 1 <= args.max_page_size <= 1000:
        problems.append(f"--max-page-size must be from 1 to 1000, got {args.max_page_size}")
    if not args.account_name:
        problems.append("--account-name must not be empty")
    if (args.tls_cert is None) != (args.tls_key is None):
        problems.append("--tls-cert and --tls-key go together")
    if not 0 <= args.task_counts_lag_s <= 3600:
        problems.append(f"--task-counts-lag-s must be from 0 to 3600, got {args.task_counts_lag_s}")
    if not 0 <= args.pool_delete_delay_s <= 3600:
        problems.append(f"--pool-delete-delay-s must be from 0 to 3600, got {args.pool_delete_delay_s}")
    if not 0 < args.time_scale <= 1000:
        problems.append(f"--time-scale must be above 0 and at most 1000, got {args.time_scale}")
    for flag in (
        "max_active_jobs",
        "max_dedicated_cores",
        "max_low_priority_cores",
        "max_pools",
        "max_spot_cores",
    ):
        value = getattr(args, flag)
        if value is not None and value < 0:
            problems.append(f"--{flag.replace('_', '-')} must be 0 or more, got {value}")
    if args.max_spot_cores is not None and args.max_low_priority_cores is not None:
        # Batch-managed accounts get low-priority VMs, user-subscription ones Spot VMs: never both.
        problems.append(
            "--max-spot-cores (a user-subscription account) and --max-low-priority-cores exclude each other"
        )
    return problems


async def serve(args: argparse.Namespace, key: bytes, faults: FaultSettings) -> None:
    root: Path = args.root
    account = Account(args.account_name, root)
    account.quota = Quotas(
        max_active_jobs=args.max_active_jobs,
        max_dedicated_cores=args.max_dedicated_cores,
        max_low_priority_cores=args.max_low_priority_cores,
        max_pools=args.max_pools,
        max_spot_cores=args.max_spot_cores,
    )
    # Signals are caught before the start line is printed, so a parent that stops the emulator
    # right after reading it still gets a clean shutdown.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        # Downloads of any size are fine while bytes keep flowing; a stalled server fails the task.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
        async with aiohttp.ClientSession(timeout=timeout) as session, anyio.create_task_group() as group:
            # The account URL is only known once the port is bound; it is filled in below.
            runner = Runner(
                account, FaultInjector(faults), session, "", root / ".python-bin", args.nodes_max_processes
            )
            limits = Limits(
                args.max_tasks_per_request,
                args.max_body_bytes,
                faults.pool_allocation_delay_s,
                reboot_start_task_failed=not args.refuse_start_task_failed_reboot,
                max_page_size=args.max_page_size,
                pool_delete_delay_s=args.pool_delete_delay_s,
            )
            services = Services(account, runner, runner.faults, key, limits, group)
            services.count_history.lag_s = args.task_counts_lag_s
            if args.entra_token_key_file is not None:
                services.entra = EntraSettings(
                    key=args.entra_token_key_file.read_bytes(),
                    denied_operations=frozenset(filter(None, args.entra_denied_operations.split(","))),
                )
            app = build_app(services)
            app[AUTOSCALER] = Autoscaler(account, runner, group, args.time_scale)
            app_runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await app_runner.setup()
            try:
                tls = None
                if args.tls_cert is not None:
                    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                    tls.load_cert_chain(args.tls_cert, args.tls_key)
                await web.TCPSite(app_runner, HOST, args.port, backlog=1024, ssl_context=tls).start()
                scheme = "https" if tls is not None else "http"
                endpoint = f"{scheme}://{HOST}:{app_runner.addresses[0][1]}"
                runner.account_url = endpoint
                group.start_soon(Scheduler(account, runner.run_attempt, args.nodes_max_processes).run)
                group.start_soon(JobWallClock(account, args.time_scale).run)
                log.info("emulator.started", endpoint=endpoint, account_name=account.name, root=str(root))
                announcement = {
                    "endpoint": endpoint,
                    "account_name": account.name,
                    "pid": os.getpid(),
                    "root": str(root),
                }
                sys.stdout.write(json.dumps(announcement) + "\n")
                sys.stdout.flush()
                async for received in signals:
                    log.info("emulator.stopping", signal=signal.Signals(received).name)
                    break
            finally:
                with anyio.CancelScope(shield=True):
                    await app_runner.cleanup()
                # Cancelling the group cancels every attempt, and each kills its process group on the way out.
                group.cancel_scope.cancel()
    log.info("emulator.stopped")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    faults = fault_settings(args)
    problems = usage_problems(args, faults)
    try:
        key = decode_account_key(args.account_key)
    except ValueError as exc:
        problems.append(f"--account-key: {exc}")
    if problems:
        for problem in problems:
            print(f"emulator: {problem}", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    args.root = args.root.resolve()
    args.root.mkdir(parents=True, exist_ok=True)
    write_python_wrappers(args.root / ".python-bin")
    status = 0
    try:
        anyio.run(serve, args, key, faults)
    except* OSError as errors:
        # Binding happens inside the task group, so a taken port arrives wrapped in a group.
        reasons = "; ".join(
            str(error.strerror or error) for error in errors.exceptions if isinstance(error, OSError)
        )
        print(f"emulator: cannot listen on {HOST}:{args.port}: {reasons}", file=sys.stderr)
        status = 1
    except* KeyboardInterrupt:
        pass
    return status


if __name__ == "__main__":
    sys.exit(main())
