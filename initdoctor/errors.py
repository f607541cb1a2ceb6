"""Exceptions raised by initdoctor.

Every failure a user can cause (a missing, truncated or untrusted file, a bad option) is an
:class:`InitDoctorError`. The CLI catches this one type at the top and prints its message as a
single line with exit code 2; library users catch it the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


def first_line(exc: BaseException, default: str = "") -> str:
    """The first line of an exception's message (``default`` when it has none): what a one-line
    error report quotes from a library or from the user's own code."""
    text = str(exc).strip().splitlines()
    return text[0] if text else default


class InitDoctorError(Exception):
    """Base class: a problem with the user's input or settings (CLI exit code 2)."""


class InputError(InitDoctorError):
    """A model file or source that cannot be read: unknown, truncated, corrupt, or inconsistent."""


class UntrustedFormatError(InputError):
    """The file's format executes code when loaded and ``trust`` was not given."""


class SettingsError(InitDoctorError):
    """An invalid option value (thresholds, nonlinearity, mode...)."""


class Terminated(SystemExit):
    """Raised by the command line's SIGTERM/SIGHUP handler: unwinds through every writer's cleanup
    (unlike a model's own ``sys.exit``, which :func:`initdoctor.api.run` turns into an error)."""


class InitializationError(AssertionError):
    """Raised by :func:`initdoctor.assert_healthy_init`: the model's initialization has findings at
    or above ``fail_on``. ``report`` holds the full report; the message lists the failing layers."""

    def __init__(self, message: str, report: object) -> None:
        super().__init__(message)
        self.report = report


@contextlib.contextmanager
def no_exit_from_model_code() -> Iterator[None]:
    """A factory or forward that calls ``sys.exit`` (0.7.0 then exited 0 with no output) is an
    error naming it; a :class:`~initdoctor.errors.Terminated` (SIGTERM) passes through."""
    try:
        yield
    except Terminated:
        raise
    except SystemExit as exc:
        raise InputError(
            f"the model's code called sys.exit({exc.code!r}) while it was loaded or run"
        ) from None


class RankError(InitDoctorError):
    """In a torch.distributed job: another rank's diagnosis failed (its message is in this one)."""
