"""Items of one call side by side (``gateway.index.side_by_side``): results in order, and a
failure raised only once none of the call's items is running or left to run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import weakref
from collections.abc import Iterator

import pytest

from gateway.index.side_by_side import SideBySide

WAIT_S = 30  # a guard for a broken implementation, never reached by a working one


class _Tracked:
    """Calls counted while they run. ``together``: the first items wait until that many
    run at once; then an item below 0 fails, and the others wait for ``release``."""

    def __init__(self, release: threading.Event | None = None, together: int = 1) -> None:
        self.release = release
        self.together = threading.Barrier(together)
        self.running = 0
        self.most_running = 0
        self.ran: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, item: int) -> int:
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.ran.append(item)
        try:
            if len(self.ran) <= self.together.parties:
                self.together.wait(WAIT_S)
            if item < 0:
                raise ValueError(f"item {item} failed")
            if self.release is not None:
                assert self.release.wait(WAIT_S)
            return item * 10
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # whatever happened, no thread stays held


def test_items_run_side_by_side_and_come_back_in_order() -> None:
    barrier = threading.Barrier(4)  # one item at a time would break it

    def call(item: int) -> int:
        barrier.wait(WAIT_S)
        return item * 10

    assert SideBySide(4, "test").run(call, [3, 1, 2, 0]) == [30, 10, 20, 0]


def test_a_failure_is_raised_once_the_running_items_have_ended(
    release: threading.Event,
) -> None:
    tracked = _Tracked(release, together=4)  # all four running before one fails
    released = threading.Timer(0.5, release.set)  # the others end well after the failure
    released.start()
    try:
        with pytest.raises(ValueError, match="item -1 failed"):
            SideBySide(4, "test").run(tracked, [-1, 1, 2, 3])
        assert release.is_set()  # raised only after the held items were let go
        assert tracked.running == 0
    finally:
        released.cancel()


def test_items_not_started_when_one_failed_are_skipped(release: threading.Event) -> None:
    tracked = _Tracked(release, together=2)  # the failure and item 1 on the two threads
    released = threading.Timer(0.5, release.set)
    released.start()
    try:
        with pytest.raises(ValueError):
            SideBySide(2, "test").run(tracked, [-1, 1, *range(2, 12)])
    finally:
        released.cancel()
    assert sorted(tracked.ran) == [-1, 1]  # the failed item's thread took none after it
    assert tracked.running == 0


class _Payload:
    """A result that can be watched for its release (bytes cannot)."""


def test_nothing_of_a_call_is_kept_once_it_has_returned() -> None:
    """A decode child's next job must not find the last job's whole series still held."""
    side_by_side = SideBySide(4, "test")
    results = side_by_side.run(lambda _: _Payload(), range(8))
    watched = [weakref.ref(result) for result in results]
    del results
    assert [ref() for ref in watched] == [None] * 8


def test_a_call_made_from_an_items_thread_runs_its_items_in_turn() -> None:
    side_by_side = SideBySide(2, "test")

    def outer(item: int) -> list[int]:
        # Both threads are busy with outer items: waiting for them would never end.
        return side_by_side.run(lambda inner: item * 100 + inner, [1, 2, 3])

    assert side_by_side.run(outer, [1, 2]) == [[101, 102, 103], [201, 202, 203]]


def test_without_threads_the_items_run_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    tracked = _Tracked()
    assert SideBySide(4, "test").run(tracked, [1, 2, 3]) == [10, 20, 30]
    assert tracked.most_running == 1


def test_one_worker_runs_the_items_in_turn() -> None:
    tracked = _Tracked()
    assert SideBySide(1, "test").run(tracked, [1, 2, 3]) == [10, 20, 30]
    assert tracked.ran == [1, 2, 3]


def test_a_process_exits_without_waiting_for_its_running_items() -> None:
    """Items held by a server that stopped answering must not hold the process's exit."""
    program = textwrap.dedent(
        """
        import threading, time
        from gateway.index.side_by_side import SideBySide

        side_by_side = SideBySide(2, "test")
        threading.Thread(
            target=side_by_side.run, args=(lambda _: time.sleep(600), [1, 2, 3]), daemon=True
        ).start()
        time.sleep(0.5)
        print("exiting", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "exiting"
