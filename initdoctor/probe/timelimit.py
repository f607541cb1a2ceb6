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

An enforced limit also sets a deadline that code which cannot be interrupted by the signal honours
on its own: the weight scans' worker threads (:func:`initdoctor.stats.scan_deadline`, checked
between blocks) and the ONNX probe's child process (:func:`current_limit`, killed then).

The error says what was running when the time ran out (:func:`timeout_message`): reading the
weights, importing torch, the model's factory, tracing the model, the model's forward, or the ONNX
session — read from the stack the signal interrupted (else "the model's code").
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..stats import DeadlineExceeded, scan_deadline
from .types import ProbeError

READING = "reading the weights"
FACTORY = "the model's factory"
TRACING = "tracing the model"
FORWARD = "the model's forward"
ONNX_SESSION = "the ONNX session"
IMPORTING_TORCH = "importing torch"
_PACKAGE = str(Path(__file__).resolve().parents[1])  # the initdoctor package folder
_TRACERS = (
    "/torch/fx/",
    "/torch/export/",
    "/torch/_export/",
    "/torch/_dynamo/",
    "/torch/onnx/",
    "/torch/jit/",
)
_state = threading.local()


def timeout_message(doing: str, seconds: float) -> str:
    """The one line of a time limit that ran out while ``doing`` ran."""
    return f"{doing} did not finish within {seconds:g} s (--timeout)"


def current_limit() -> tuple[float, float] | None:
    """``(deadline, seconds)`` of the enforced time limit of this thread: when it ends
    (``time.monotonic()``) and its length; None without one."""
    return getattr(_state, "limit", None)


def _doing(frame: Any) -> str | None:
    """What the interrupted stack was running, from its innermost recognisable frame."""
    while frame is not None:
        filename = frame.f_code.co_filename.replace("\\", "/")
        if frame.f_code.co_name == "<module>" and "/torch/" in filename:
            return IMPORTING_TORCH
        if any(part in filename for part in _TRACERS):
            return TRACING
        if filename.startswith(_PACKAGE):
            module = filename[len(_PACKAGE) :].lstrip("/")
            if module.startswith("probe/onnx_"):
                return ONNX_SESSION
            if module == "probe/torch_backend.py":
                return FORWARD
            if module == "formats/factory.py" and frame.f_code.co_name == "build_from_factory":
                return FACTORY
            if module.startswith("formats/") or module == "stats.py":
                return READING
        frame = frame.f_back
    return None


@dataclass(frozen=True)
class TimeLimitStatus:
    """What ``with time_limit(...) as status`` got: whether the limit is enforced, and if not, why."""

    seconds: float
    enforced: bool
    #: one line saying why the limit is not enforced; None when it is
    reason: str | None = None


class _Timeout(BaseException):  # not an Exception: passes through the forward's error handling
    def __init__(self, doing: str | None = None) -> None:
        super().__init__(doing)
        self.doing = doing


def _raise_timeout(signum: int, frame: Any) -> None:
    raise _Timeout(_doing(frame))


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
        self.deadline: float | None = None
        self.outer_limit: tuple[float, float] | None = None
        self.scans: AbstractContextManager[None] | None = None

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
                self.deadline = time.monotonic() + self.seconds
                self.outer_limit, _state.limit = current_limit(), (self.deadline, self.seconds)
                self.scans = scan_deadline(self.deadline)
                self.scans.__enter__()
                signal.setitimer(signal.ITIMER_REAL, self.seconds)
        self.status = TimeLimitStatus(self.seconds, reason is None, reason)
        return self.status

    def _disarm(self) -> None:
        if self.installed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
            self.installed = False
            if self.scans is not None:
                self.scans.__exit__(None, None, None)
                self.scans = None
            _state.limit = self.outer_limit

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self._disarm()
        except _Timeout:  # the one-shot timer fired as the body ended: it did end, put things back
            self._disarm()
        if not self.status.enforced:
            return
        if isinstance(exc, _Timeout):  # ours, not an outer limit's
            raise ProbeError(timeout_message(exc.doing or "the model's code", self.seconds)) from None
        if (
            isinstance(exc, DeadlineExceeded)
            and self.deadline is not None
            and time.monotonic() >= self.deadline
        ):
            raise ProbeError(timeout_message(READING, self.seconds)) from None
