"""time_limit: SIGALRM only where it is safe (main thread, no handler or timer of the caller's);
elsewhere the body runs unbounded and the status says why."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from initdoctor.probe import ProbeError, time_limit


def _slow(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:  # Python code between sleeps: the alarm interrupts it
        time.sleep(0.01)


def test_main_thread_slow_body_is_stopped_with_the_timeout_error():
    before = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    with pytest.raises(ProbeError) as info, time_limit(0.2) as status:
        assert status.enforced is True
        assert status.reason is None
        assert status.seconds == 0.2
        _slow(5.0)
    assert str(info.value) == "the model's code did not finish within 0.2 s (--timeout)"
    assert time.monotonic() - start < 2.0
    assert signal.getsignal(signal.SIGALRM) is before  # handler put back
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no timer left behind


def test_fast_body_finishes_and_restores_the_default_handler():
    with time_limit(5.0) as status:
        value = sum(range(10))
    assert value == 45
    assert status.enforced is True
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_users_own_sigalrm_handler_is_kept_and_still_fires():
    fired: list[int] = []

    def mine(signum, frame):
        fired.append(signum)

    previous = signal.signal(signal.SIGALRM, mine)
    try:
        with time_limit(0.05) as status:
            _slow(0.2)  # would have timed out had the limit taken SIGALRM
        assert status.enforced is False
        assert status.reason == "SIGALRM already has a handler"
        assert fired == []
        assert signal.getsignal(signal.SIGALRM) is mine
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        _slow(0.3)
        assert fired == [signal.SIGALRM]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_pending_timer_of_the_caller_is_left_alone():
    previous = signal.signal(signal.SIGALRM, signal.SIG_IGN)
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        with time_limit(0.05) as status:
            _slow(0.15)
        assert status.enforced is False
        assert status.reason == "an ITIMER_REAL timer is already pending"
        assert signal.getsignal(signal.SIGALRM) == signal.SIG_IGN
        remaining = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 29.0 < remaining <= 30.0  # the caller's timer still runs
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_off_the_main_thread_runs_unbounded_and_says_so():
    seen: dict[str, object] = {}

    def worker():
        try:
            with time_limit(0.05) as status:
                _slow(0.15)
                seen["finished"] = True
            seen["enforced"], seen["reason"] = status.enforced, status.reason
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion below
            seen["error"] = repr(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    assert seen == {"finished": True, "enforced": False, "reason": "not on the main thread"}
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL


def test_no_limit_and_opt_out_never_touch_sigalrm():
    with time_limit(0) as status:
        pass
    assert (status.enforced, status.reason) == (False, "no time limit was asked for")
    with time_limit(0.05, use_sigalrm=False) as status:
        _slow(0.15)
    assert (status.enforced, status.reason) == (False, "the caller turned SIGALRM off")
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL


def test_nested_limit_leaves_the_outer_one_in_charge():
    with (
        pytest.raises(ProbeError, match=r"within 0\.2 s"),
        time_limit(0.2) as outer,
        time_limit(10.0) as inner,
    ):
        _slow(5.0)
    assert (outer.enforced, inner.enforced, inner.reason) == (True, False, "SIGALRM already has a handler")
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL


def test_diagnose_off_the_main_thread_says_the_limit_was_not_enforced():
    """In a worker thread (a training callback, a torch.distributed helper) diagnose runs, and the
    report says that its time limit could not be enforced."""
    import threading

    import initdoctor
    from examples.models import plain_mlp

    reports = []
    thread = threading.Thread(
        target=lambda: reports.append(initdoctor.diagnose(plain_mlp(depth=3, width=8), timeout=5.0))
    )
    thread.start()
    thread.join(60)
    (report,) = reports
    assert report.notes[-1] == "time limit of 5 s not enforced: not on the main thread"
    assert report.summary.ok + report.summary.warn + report.summary.error == 3
    on_main = initdoctor.diagnose(plain_mlp(depth=3, width=8), timeout=5.0)
    assert not any("not enforced" in note for note in on_main.notes)
