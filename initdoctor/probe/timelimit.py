"""A time limit on the model's own code, safe to use from a library.

The model's code runs twice in a diagnosis — when torch.fx/torch.export trace it and when the probe
runs it — and either can hang. The limit is a one-shot ``ITIMER_REAL`` timer whose SIGALRM handler
raises inside the running code: a forward stuck in Python code is interrupted, one stuck inside a
native kernel when that kernel returns.

SIGALRM belongs to the whole process and is delivered to the main thread only, so the limit is
enforced only when that is safe: a limit was asked for (``seconds > 0``), the caller allows the
signal, the platform has ``setitimer``, the code runs on the main thread, SIGALRM has no handler of
its own (default or ignored) and no ``ITIMER_REAL`` timer is pending. Otherwise the body runs
unbounded and the status says why, in one line, for the caller to report. The previous handler and
timer state are always put back on exit.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from typing import Any

from .types import ProbeError


@dataclass(frozen=True)
class TimeLimitStatus:
    """What ``with time_limit(...) as status`` got: whether the limit is enforced, and if not, why."""

    seconds: float
    enforced: bool
    #: one line saying why the limit is not enforced; None when it is
    reason: str | None = None


class _Timeout(BaseException):  # not an Exception: passes through the forward's error handling
    pass


def _raise_timeout(signum: int, frame: Any) -> None:
    raise _Timeout()


class time_limit:
    """Raise :class:`ProbeError` when the block runs longer than ``seconds``, where SIGALRM can be
    used safely (see the module docstring); ``__enter__`` returns a :class:`TimeLimitStatus`.

    ``use_sigalrm=False`` never touches SIGALRM (a caller that owns the signal, or wants none):
    the body runs unbounded and the status says so.
    """

    def __init__(self, seconds: float, *, use_sigalrm: bool = True) -> None:
        self.seconds = seconds
        self.use_sigalrm = use_sigalrm
        self.installed = False
        self.previous: Any = None
        self.status = TimeLimitStatus(seconds, False, "not entered")

    def _refusal(self) -> str | None:
        """Why SIGALRM must not be used here, or None when it can be."""
        if not self.seconds > 0:
            return "no time limit was asked for"
        if not self.use_sigalrm:
            return "the caller turned SIGALRM off"
        if not hasattr(signal, "setitimer"):
            return "SIGALRM timers are not available on this platform"
        if threading.current_thread() is not threading.main_thread():
            return "not on the main thread"
        handler = signal.getsignal(signal.SIGALRM)
        if handler is None:
            return "SIGALRM has a handler installed outside Python"
        if handler not in (signal.SIG_DFL, signal.SIG_IGN):
            return "SIGALRM already has a handler"
        if signal.getitimer(signal.ITIMER_REAL)[0] > 0:
            return "an ITIMER_REAL timer is already pending"
        return None

    def __enter__(self) -> TimeLimitStatus:
        reason = self._refusal()
        if reason is None:
            try:
                self.previous = signal.signal(signal.SIGALRM, _raise_timeout)
            except ValueError:  # not the main interpreter's main thread
                reason = "not on the main thread"
            else:
                self.installed = True
                signal.setitimer(signal.ITIMER_REAL, self.seconds)
        self.status = TimeLimitStatus(self.seconds, reason is None, reason)
        return self.status

    def _disarm(self) -> None:
        if self.installed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
            self.installed = False

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self._disarm()
        except _Timeout:  # the one-shot timer fired as the body ended: it did end, put things back
            self._disarm()
        if isinstance(exc, _Timeout) and self.status.enforced:  # ours, not an outer limit's
            raise ProbeError(
                f"the model's code did not finish within {self.seconds:g} s (--timeout): its forward hangs"
            ) from None
