"""The drain policy without processes (as arq tests its signal handler): what is stopped, and when."""

from __future__ import annotations

import signal

from orchestrator.service.drain import DrainPolicy, Phase


class Recorder:
    def __init__(self) -> None:
        self.intake_stopped = 0
        self.cancelled: list[str] = []
        self.exited: list[signal.Signals] = []

    def policy(self, grace_s: float = 20.0) -> DrainPolicy:
        return DrainPolicy(
            grace_s=grace_s,
            stop_intake=self.stop_intake,
            cancel_batch=self.cancelled.append,
            exit_now=self.exited.append,
        )

    def stop_intake(self) -> None:
        self.intake_stopped += 1


def test_serving_cancels_nothing() -> None:
    recorder = Recorder()
    policy = recorder.policy()
    policy.step({"a": True, "b": False}, now=100.0)
    assert policy.taking_work and recorder.cancelled == [] and recorder.intake_stopped == 0


def test_first_signal_stops_intake_and_stops_batches_past_submission_at_once() -> None:
    recorder = Recorder()
    policy = recorder.policy(grace_s=20.0)
    policy.on_signal(signal.SIGTERM, now=10.0)
    assert recorder.intake_stopped == 1 and not policy.taking_work and policy.phase is Phase.DRAINING
    policy.step({"running": True, "uploading": False}, now=10.1)
    assert recorder.cancelled == ["running"]
    policy.step({"uploading": False}, now=29.9)  # still within the grace
    assert recorder.cancelled == ["running"]
    policy.step({"uploading": True}, now=15.0)  # it got its tasks in: stopped now
    assert recorder.cancelled == ["running", "uploading"]


def test_after_the_grace_everything_left_is_cancelled_once() -> None:
    recorder = Recorder()
    policy = recorder.policy(grace_s=5.0)
    policy.on_signal(signal.SIGINT, now=0.0)
    policy.step({"slow": False}, now=4.0)
    assert recorder.cancelled == []
    policy.step({"slow": False}, now=5.0)
    policy.step({"slow": False}, now=6.0)
    assert recorder.cancelled == ["slow"] and policy.phase is Phase.CANCELLING


def test_a_second_signal_exits_at_once() -> None:
    recorder = Recorder()
    policy = recorder.policy()
    policy.on_signal(signal.SIGTERM, now=0.0)
    policy.on_signal(signal.SIGINT, now=0.5)
    assert recorder.exited == [signal.SIGINT] and recorder.intake_stopped == 1
