"""The exception tree every stage raises from; the CLI maps it to exit statuses."""

from __future__ import annotations

from collections.abc import Iterator


class TopnError(Exception):
    """Base of every error topn reports to a user. Messages never contain secrets."""

    exit_code = 1
    # Set by a run that has already said so in its own `run.failed` event.
    reported_by_run = False


class UsageError(TopnError):
    """The user asked for something that cannot start (exit 2, nothing created)."""

    exit_code = 2


class ConfigError(UsageError):
    """A bad or missing setting; the message names the key and the file."""


class InputError(UsageError):
    """A missing path, an empty folder, an unreadable file, a name that cannot be staged."""


class CredentialError(UsageError):
    """A wrong key or an identity that cannot get a token: fail fast, never retry."""


class ServiceUnavailableError(TopnError):
    """An endpoint did not answer within the retry budget (a dead endpoint, not a flaky one)."""


class PoolError(TopnError):
    """The pool cannot run tasks: start task failed, allocation failed, quota reached."""


class LocalWriteError(TopnError):
    """A result file or summary.json could not be written (disk full, read-only or vanished folder).

    Nothing is lost: the results stay in Blob Storage and the journal keeps the state reached, so the
    run stops as interrupted and `topn resume` finishes it once the folder is usable again.
    """


class RunFailedError(TopnError):
    """The run could not finish; the journal keeps what was done so `topn resume` can go on."""


class JobEndedError(RunFailedError):
    """The run's job ended under it (its wall clock, a user, a deletion); a resume goes on in a new job."""


def iterate_exceptions(error: BaseException) -> Iterator[BaseException]:
    """The leaves of an exception group, depth first (the error itself when it is not a group)."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from iterate_exceptions(inner)
    else:
        yield error


def first_leaf(error: BaseException) -> BaseException:
    """The first leaf of an exception group: the innermost cause a task group stopped on."""
    return next(iterate_exceptions(error), error)
