"""The wake pipe: any thread wakes the waiter, and nothing is written once it is closed."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from chatsvc.wakeup import PROCESS_SIGNALS, WakePipe, block_process_signals


def test_a_wake_before_the_wait_is_not_lost() -> None:
    pipe = WakePipe()
    try:
        pipe.wake()  # e.g. a signal's byte, written just before the waiter sleeps
        started = time.monotonic()
        pipe.wait(30.0)
        assert time.monotonic() - started < 10.0
    finally:
        pipe.close()


def test_wait_returns_when_another_thread_wakes_it() -> None:
    pipe = WakePipe()
    waiting = threading.Event()
    done = threading.Event()

    def waiter() -> None:
        waiting.set()
        pipe.wait(30.0)
        done.set()

    t = threading.Thread(target=waiter)
    t.start()
    assert waiting.wait(10)
    pipe.wake()
    assert done.wait(10)
    t.join(10)
    pipe.close()


def test_wait_times_out_and_many_wakes_never_block() -> None:
    pipe = WakePipe()
    try:
        pipe.wait(0.0)  # nothing pending: returns
        for _ in range(100_000):  # far more than a pipe holds: wake never blocks
            pipe.wake()
        pipe.wait(0.0)
        pipe.wait(0.0)  # drained by the first wait
    finally:
        pipe.close()


def test_wake_and_close_after_close_do_nothing() -> None:
    pipe = WakePipe()
    write_fd = pipe.write_fd
    pipe.close()
    r, w = os.pipe()  # likely takes the numbers the wake pipe gave back
    try:
        pipe.wake()
        pipe.close()
        if w == write_fd or r == write_fd:
            os.set_blocking(r, False)
            with pytest.raises(BlockingIOError):
                os.read(r, 1)  # nothing was written to the reused number
    finally:
        os.close(r)
        os.close(w)


def test_block_process_signals_blocks_them_in_the_calling_thread_only() -> None:
    seen: list[set[int]] = []

    def worker() -> None:
        block_process_signals()
        seen.append(set(signal.pthread_sigmask(signal.SIG_BLOCK, [])))

    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert set(PROCESS_SIGNALS) <= seen[0]
    assert not set(PROCESS_SIGNALS) & set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
