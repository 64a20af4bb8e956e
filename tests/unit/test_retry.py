"""The one back-off of onfinish's retry loops."""

from __future__ import annotations

import threading

import pytest

from onfinish.retry import Backoff, Stopped, retry_until_stopped


def test_delays_double_up_to_the_maximum_and_a_success_resets_them() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.succeeded()
    assert backoff.failed() == 0.5


def test_a_deadline_waiter_is_ready_once_the_delay_is_over() -> None:
    backoff = Backoff(0.001, 0.001)
    assert backoff.ready()
    slow = Backoff(60, 60)
    slow.failed()
    assert not slow.ready()
    backoff.failed()
    threading.Event().wait(0.01)
    assert backoff.ready()
    with pytest.raises(ValueError, match="initial"):
        Backoff(2.0, 1.0)


def test_a_step_is_retried_until_it_succeeds_and_each_failure_is_reported() -> None:
    attempts: list[int] = []
    reported: list[tuple[str, float]] = []

    def step() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError(f"away {len(attempts)}")
        return "done"

    result = retry_until_stopped(
        step,
        backoff=Backoff(0.001, 0.002),
        stop=threading.Event(),
        on_failure=lambda exc, delay: reported.append((str(exc), delay)),
    )
    assert result == "done" and len(attempts) == 3
    assert reported == [("away 1", 0.001), ("away 2", 0.002)]


def test_other_errors_pass_through_and_a_stop_ends_the_wait() -> None:
    def broken() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        retry_until_stopped(
            broken,
            backoff=Backoff(1, 1),
            stop=threading.Event(),
            on_failure=lambda *_: None,
            retry_on=(ConnectionError,),
        )
    stop = threading.Event()
    stop.set()

    def away() -> None:
        raise ConnectionError

    with pytest.raises(Stopped):
        retry_until_stopped(away, backoff=Backoff(60, 60), stop=stop, on_failure=lambda *_: None)
