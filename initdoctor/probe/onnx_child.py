"""The ONNX probe in a child process: stopped at the time limit, its memory capped.

A hostile (or broken) graph can keep onnxruntime busy forever — a ``Loop`` of 2⁶² iterations
never returns to Python, so no signal handler runs — or allocate whatever a ``ConstantOfShape``
asks for. So :func:`probe_onnx_isolated` runs :func:`~.onnx_backend.probe_onnx` in a child
process, always (the memory cap applies with or without ``--timeout``):

* **time**: the parent waits for the result until the enforced time limit's deadline
  (:func:`~.timelimit.current_limit`) and kills the child then (SIGKILL: it needs no cooperation
  from onnxruntime). Without an enforced limit the parent waits as long as the probe runs, as
  for any model.
* **memory**: the child caps its own data segment (``RLIMIT_DATA``: heap and private mappings,
  where onnxruntime's buffers live) at what it holds once it has its job plus
  :func:`memory_budget` — ``8 × --max-input-mib`` (8 GiB by default) plus three times the model's
  files; :func:`~.onnx_backend.probe_onnx` also refuses a graph whose inferred shapes give one
  tensor larger than the budget. An allocation beyond the cap fails inside the child and comes
  back as one error line.

The children are forked by a host process (:func:`serve`, started once per process with the
parent's ``sys.path``) that has imported numpy, onnx and onnxruntime: a probe costs a fork, not an
interpreter, and nothing of the caller's ``__main__`` is run again (multiprocessing's ``spawn``
and ``forkserver`` would re-run a script). Each child gets two pipes (its job in, its progress and
result out) passed to the host over a UNIX socket; the host reports the child's pid and, once it
has reaped it, its exit status. The host runs in its own session (Ctrl-C is the parent's to
handle) and exits when the parent closes the socket; a child exits when the parent closes its
result pipe. Where ``fork`` or fd passing is missing (Windows) the probe runs in-process.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InitDoctorError
from ..model import ModelDescription
from ..settings import ProbeSettings
from .onnx_backend import BUDGET_RULE, FILES_MULTIPLE, INPUT_MULTIPLE, probe_onnx
from .timelimit import ONNX_SESSION, current_limit, timeout_message
from .types import ProbeError, ProbeResult, Progress

PROGRESS_EVERY = 0.05  # seconds between two progress messages from the child
GRACE = 1.0  # seconds past the deadline the parent waits before it gives up on its own
_INT = struct.Struct("<q")
_lock = threading.Lock()  # one probe at a time through the host
_host: _Host | None = None


def memory_budget(source: Path | bytes, settings: ProbeSettings) -> int:
    """Bytes the ONNX probe may allocate beyond what its process holds with its job."""
    if isinstance(source, bytes):
        model_bytes = len(source)
    else:
        from ..formats import model_files

        try:
            model_bytes = sum(p.stat().st_size for p in model_files(Path(source), "onnx"))
        except (OSError, InitDoctorError):
            model_bytes = Path(source).stat().st_size
    return int(INPUT_MULTIPLE * settings.max_input_mib * 2**20) + FILES_MULTIPLE * model_bytes


def probe_onnx_isolated(
    source: Path | bytes,
    desc: ModelDescription,
    settings: ProbeSettings,
    inputs: dict[str, np.ndarray] | list[np.ndarray] | None = None,
    progress: Progress | None = None,
) -> ProbeResult:
    """:func:`~.onnx_backend.probe_onnx` in a child process (see the module docstring)."""
    global _host
    budget = memory_budget(source, settings)
    if not (hasattr(os, "fork") and hasattr(socket, "send_fds")):  # pragma: no cover - Windows
        return probe_onnx(source, desc, settings, inputs, progress, memory_budget=budget)
    if not isinstance(source, bytes):  # the host's working folder may not be the caller's (os.chdir)
        source = Path(os.path.abspath(source))  # not resolve(): a symlinked graph keeps its folder
    job = (source, desc, settings, inputs, progress is not None, budget)
    with _lock:
        if _host is None or _host.process.poll() is not None:
            _host = _Host()
        host = _host
        try:
            return host.run(job, budget, progress)
        except BaseException:
            if host.broken:  # the protocol was cut short (a signal, a dead host): start afresh
                host.close()
                _host = None
            raise


class _Host:
    """The parent's handle on the host process (see the module docstring)."""

    def __init__(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        boot = (
            f"import sys; sys.path[:] = {sys.path!r}\nfrom {__name__} import serve\nserve({theirs.fileno()})"
        )
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", boot],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            theirs.close()
        self.sock = mine
        self.broken = False

    def close(self) -> None:
        self.sock.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def _read_int(self) -> int:
        data = b""
        while len(data) < _INT.size:
            part = self.sock.recv(_INT.size - len(data))
            if not part:
                raise ProbeError(f"the process that runs {ONNX_SESSION} exited unexpectedly")
            data += part
        return int(_INT.unpack(data)[0])

    def run(self, job: tuple[Any, ...], budget: int, progress: Progress | None) -> ProbeResult:
        limit = current_limit()
        job_r, job_w = os.pipe()
        out_r, out_w = os.pipe()
        results, jobs = Connection(out_r, writable=False), Connection(job_w, readable=False)
        self.broken = True  # until the child's exit status is read back
        pid: int | None = None
        finished = False
        try:
            socket.send_fds(self.sock, [b"j"], [job_r, out_w])
            os.close(job_r)
            os.close(out_w)
            pid = self._read_int()
            with contextlib.suppress(OSError):  # a child dead before it read its job: its pipe says how
                jobs.send(job)
            jobs.close()
            result = self._wait(results, limit, progress)
            finished = True
            return result
        except EOFError:  # the child died without a word: killed, or crashed in native code
            finished = True
            raise ProbeError(_death(self._status(pid), budget)) from None
        finally:
            results.close()  # the child exits when it sees this
            jobs.close()
            if pid is not None and self.broken:
                if not finished:
                    with contextlib.suppress(ProcessLookupError):  # not reaped yet: the host waits for it
                        os.kill(pid, signal.SIGKILL)
                self._status(pid)

    def _status(self, pid: int | None) -> int:
        """The child's exit status, from the host once it has reaped it (once per child)."""
        status = self._read_int()
        self.broken = False
        return status

    def _wait(
        self, results: Connection, limit: tuple[float, float] | None, progress: Progress | None
    ) -> ProbeResult:
        while True:
            # SIGALRM interrupts this wait at the deadline (naming the ONNX session); the grace
            # only matters if it does not
            wait = None if limit is None else max(0.0, limit[0] + GRACE - time.monotonic())
            if not results.poll(wait):
                assert limit is not None  # poll(None) waits until there is something
                raise ProbeError(timeout_message(ONNX_SESSION, limit[1]))
            kind, payload = results.recv()
            if kind == "progress":
                for done, total in payload:
                    progress(done, total)  # type: ignore[misc]  # sent only when progress is given
            elif kind == "result":
                return payload  # a ProbeResult, pickled
            elif kind == "error":
                raise payload from None
            else:  # "bug": an exception the probe does not expect, with the child's traceback
                error = RuntimeError(payload[0])
                error.add_note(payload[1])
                raise error


def _death(status: int, budget: int) -> str:
    how = f"exit code {status}"
    if status < 0:
        try:
            how = f"signal {signal.Signals(-status).name}"
        except ValueError:
            how = f"signal {-status}"
    return (
        f"{ONNX_SESSION} stopped ({how}); the probe's memory cap is {budget / 2**30:.3g} GiB ({BUDGET_RULE})"
    )


# --- the host and its children -----------------------------------------------------------------


def serve(fd: int) -> None:
    """The host: fork one child per job received on the socket ``fd``; exit when it closes."""
    # what probe_onnx imports, imported once here: each child is a cheap fork
    import numpy.random  # noqa: F401
    import onnx.numpy_helper  # noqa: F401
    import onnx.shape_inference  # noqa: F401
    import onnxruntime  # noqa: F401

    from ..formats import onnx_data, onnx_graph  # noqa: F401

    sock = socket.socket(fileno=fd)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, 16, 2)
        except OSError:
            return
        if not message or len(fds) != 2:
            return
        pid = os.fork()
        if pid == 0:
            try:
                sock.close()
                _child(*fds)
            finally:
                os._exit(0)
        for child_fd in fds:
            os.close(child_fd)
        try:
            sock.sendall(_INT.pack(pid))
            _, status = os.waitpid(pid, 0)
            sock.sendall(_INT.pack(os.waitstatus_to_exitcode(status)))
        except OSError:  # the parent is gone
            return


def _child(job_fd: int, out_fd: int) -> None:
    """A child: read the job, cap memory, run the probe, send ticks and the result or the error."""
    _watch_parent(out_fd)
    with Connection(job_fd, writable=False) as jobs:
        source, desc, settings, inputs, want_progress, budget = jobs.recv()
    send = Connection(out_fd, readable=False)
    _cap_memory(budget)
    ticks: list[tuple[int, int]] = []
    last = time.monotonic()

    def progress(done: int, total: int) -> None:
        nonlocal last
        ticks.append((done, total))
        if time.monotonic() - last > PROGRESS_EVERY:
            send.send(("progress", ticks[:]))
            ticks.clear()
            last = time.monotonic()

    try:
        result = probe_onnx(
            source, desc, settings, inputs, progress if want_progress else None, memory_budget=budget
        )
        message: tuple[str, Any] = ("result", result)
    except MemoryError:
        message = ("error", ProbeError(_out_of_memory(budget, "MemoryError")))
    except ProbeError as exc:
        text = str(exc)
        if "alloc" in text.lower():  # onnxruntime: "Failed to allocate memory", std::bad_alloc
            text = _out_of_memory(budget, text)
        message = ("error", ProbeError(text))
    except InitDoctorError as exc:
        message = ("error", exc)
    except BaseException as exc:  # noqa: BLE001 - a bug: sent back with its traceback
        message = ("bug", (f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    if ticks:
        send.send(("progress", ticks))
    send.send(message)
    send.close()


def _out_of_memory(budget: int, detail: str) -> str:
    return (
        f"{ONNX_SESSION} needs more memory than the probe's cap of {budget / 2**30:.3g} GiB "
        f"({BUDGET_RULE}): {detail.strip().splitlines()[0]}"
    )


def _watch_parent(out_fd: int) -> None:
    """Exit as soon as the parent closes the result pipe (it gave up, or it is gone)."""

    def watch() -> None:
        poller = select.poll()
        poller.register(out_fd, select.POLLERR)
        poller.poll()  # the read end closed
        os._exit(1)

    threading.Thread(target=watch, name="initdoctor-watch-parent", daemon=True).start()


def _cap_memory(budget: int) -> None:
    """``RLIMIT_DATA`` = what the process holds now + ``budget`` (where the platform has it)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX: no cap
        return
    held = 1 << 30
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmData:"):
                    held = int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - no /proc (macOS): a generous allowance for the runtime
        pass
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = held + budget if hard == resource.RLIM_INFINITY else min(held + budget, hard)
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):  # pragma: no cover - a platform that refuses it
        pass
