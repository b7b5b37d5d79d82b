# kombu's consumer API (Connection, Consumer, Message) is untyped.
# mypy: disable-error-code="no-untyped-call"
"""The embedded broker wakes its consumers when a message can be delivered instead of polling.

Every test sets a safety-net interval of an hour, or waits with no timeout at all: a message
that arrives anyway was delivered because a change woke its consumer, not because it looked
again on a timer. Each test uses queues of its own (the memory transport's are the process's).
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from celery import Celery
from celery.app.trace import setup_worker_optimizations
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.message import Message

from gateway.jobs.memory_broker import DELIVERABLE, TRANSPORT, Transport, Wakes
from gateway.jobs.task_queue import create_celery
from gateway.settings import Settings
from workers.worker import _controller

HOUR_S = 3600.0
WAIT_S = 60  # how long a test waits for what must happen (never reached when it works)


def _queue() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def _since(before: Wakes) -> Wakes:
    now = DELIVERABLE.wakes
    return Wakes(
        at_once=now.at_once - before.at_once,
        signal=now.signal - before.signal,
        timeout=now.timeout - before.timeout,
        waits=now.waits - before.waits,
    )


def _connection() -> Connection:
    return Connection(
        "memory://localhost/", transport=TRANSPORT, transport_options={"polling_interval": HOUR_S}
    )


def _in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Runs ``target`` in a thread; what it returned or raised lands in the list."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(target())
        except BaseException as exc:  # the test asserts on it
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _until_waiting(before: Wakes, waits: int = 1) -> None:
    """Returns once consumers have gone to sleep ``waits`` times since ``before``."""
    done = threading.Event()
    while _since(before).waits < waits:
        done.wait(0.005)


class Consumer:
    """A kombu consumer on its own connection, collecting what it is given."""

    def __init__(self, queue: Queue, prefetch: int = 0, ack: bool = True) -> None:
        self.connection = _connection()
        self.received: list[Any] = []  # kombu's virtual Message: the raw payload is _raw
        self.ack = ack
        self.consumer = self.connection.Consumer([queue], callbacks=[self._on_message])
        if prefetch:
            self.consumer.qos(prefetch_count=prefetch)
        self.consumer.consume()

    def _on_message(self, body: Any, message: Message) -> None:
        self.received.append(message)
        if self.ack:
            message.ack()

    def drain(self, timeout: float | None = None) -> Any:
        return self.connection.drain_events(timeout=timeout)


@pytest.fixture
def queue() -> Iterator[Queue]:
    name = _queue()
    yield Queue(name, Exchange(name, type="direct"), routing_key=name)


def _publish(queue: Queue, body: Any) -> None:
    with _connection() as connection:
        connection.Producer().publish(
            body, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue]
        )


def test_a_waiting_consumer_wakes_when_a_message_is_put(queue: Queue) -> None:
    consumer = Consumer(queue)
    before = replace(DELIVERABLE.wakes)
    thread, outcome = _in_thread(consumer.drain)  # no timeout: only a put can end it
    _until_waiting(before)
    _publish(queue, {"n": 1})
    thread.join(WAIT_S)
    assert outcome == [None]
    assert [m.payload for m in consumer.received] == [{"n": 1}]
    assert _since(before).signal == 1 and _since(before).timeout == 0


def test_drain_events_honours_its_timeout_as_kombu_does(queue: Queue) -> None:
    consumer = Consumer(queue)
    with pytest.raises(socket.timeout):
        consumer.drain(timeout=0)
    with pytest.raises(socket.timeout):
        consumer.drain(timeout=0.05)  # shorter than the safety net: the timeout wins
    _publish(queue, {"n": 2})
    consumer.drain(timeout=0)  # a message already there is delivered at once
    assert [m.payload for m in consumer.received] == [{"n": 2}]


def test_a_rejected_message_put_back_wakes_a_waiting_consumer(queue: Queue) -> None:
    first = Consumer(queue, ack=False)
    _publish(queue, {"n": 3})
    first.drain(timeout=WAIT_S)
    second = Consumer(queue)
    before = replace(DELIVERABLE.wakes)
    thread, outcome = _in_thread(second.drain)
    _until_waiting(before)
    first.received[0].reject(requeue=True)
    thread.join(WAIT_S)
    assert outcome == [None]
    assert [m.payload for m in second.received] == [{"n": 3}]
    assert second.received[0]._raw["redelivered"]  # kombu marks a message put back


def test_unacknowledged_messages_recovered_are_delivered_to_a_waiting_consumer(
    queue: Queue,
) -> None:
    """The memory transport has no visibility timeout (a message lives in this process):
    unacknowledged messages come back by ``basic_recover``, which puts them back too."""
    first = Consumer(queue, ack=False)
    for n in range(3):
        _publish(queue, {"n": n})
    for _ in range(3):
        first.drain(timeout=WAIT_S)
    first.consumer.cancel()
    second = Consumer(queue)
    before = replace(DELIVERABLE.wakes)
    thread, outcome = _in_thread(lambda: [second.drain() for _ in range(3)])
    _until_waiting(before)
    first.connection.default_channel.basic_recover(requeue=True)
    thread.join(WAIT_S)
    assert outcome == [[None, None, None]]
    assert sorted(m.payload["n"] for m in second.received) == [0, 1, 2]


def test_an_ack_wakes_a_consumer_held_back_by_its_prefetch_limit(queue: Queue) -> None:
    consumer = Consumer(queue, prefetch=1, ack=False)
    _publish(queue, {"n": 1})
    _publish(queue, {"n": 2})
    consumer.drain(timeout=WAIT_S)
    before = replace(DELIVERABLE.wakes)
    thread, outcome = _in_thread(consumer.drain)  # the second is there but not its turn
    _until_waiting(before)
    assert len(consumer.received) == 1
    consumer.received[0].ack()  # from another thread, as Celery's pool acks
    thread.join(WAIT_S)
    assert outcome == [None]
    assert [m.payload["n"] for m in consumer.received] == [1, 2]
    assert _since(before).signal == 1


def test_closing_the_connection_ends_a_wait(queue: Queue) -> None:
    consumer = Consumer(queue)
    before = replace(DELIVERABLE.wakes)
    thread, outcome = _in_thread(consumer.drain)  # no timeout
    _until_waiting(before)
    consumer.connection.close()
    thread.join(WAIT_S)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], socket.timeout)


# Celery, as the embedded worker runs it.


Ran = Counter[int]


@pytest.fixture
def celery_apps(make_settings: Callable[..., Settings]) -> tuple[Callable[[], Celery], Ran, str]:
    """Apps as ``create_celery`` makes them for ``memory://``, less the safety net, with a
    task that counts its runs (named for this test: Celery keeps a name's first function
    process-wide)."""
    ran: Ran = Counter()
    name = f"test.record.{uuid.uuid4().hex[:12]}"
    lock = threading.Lock()
    settings = make_settings()

    def record(n: int) -> None:
        with lock:
            ran[n] += 1

    def make() -> Celery:
        app = create_celery(settings)
        app.conf.broker_transport_options["polling_interval"] = HOUR_S
        app.task(name=name)(record)
        return app

    return make, ran, name


def _start_worker(app: Celery, queue: str, settings: Settings) -> tuple[Any, threading.Thread]:
    # As the embedded worker does: pool threads run tasks through the current app (an
    # earlier test's otherwise), where every app of a test has the test's task.
    setup_worker_optimizations(app)
    worker = _controller(app, [queue], 4, settings)
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    return worker, thread


def _until(predicate: Callable[[], bool]) -> bool:
    done = threading.Event()
    for _ in range(int(WAIT_S / 0.01)):
        if predicate():
            return True
        done.wait(0.01)
    return predicate()


def test_the_embedded_broker_is_the_waking_transport_and_redis_is_not(
    make_settings: Callable[..., Settings],
) -> None:
    with create_celery(make_settings()).connection_for_write() as memory:
        assert isinstance(memory.transport, Transport)
    redis = create_celery(make_settings(broker_url="redis://127.0.0.1:6379/0"))
    assert not isinstance(redis.connection_for_write().transport, Transport)


def test_a_sent_task_starts_because_the_put_woke_the_worker(
    celery_apps: tuple[Callable[[], Celery], Ran, str], make_settings: Callable[..., Settings]
) -> None:
    make, ran, record = celery_apps
    app, queue, start = make(), _queue(), replace(DELIVERABLE.wakes)
    worker, thread = _start_worker(app, queue, make_settings())
    try:
        for n in range(3):
            before = replace(DELIVERABLE.wakes)
            _until_waiting(before)  # the worker is asleep: only the put can wake it
            app.send_task(record, args=[n], queue=queue)
            assert _until(lambda n=n: ran[n] == 1)  # type: ignore[misc]
            assert _since(before).signal >= 1
    finally:
        worker.stop(in_sighandler=False)
        thread.join(WAIT_S)
    assert _since(start).timeout == 0
    assert not thread.is_alive()  # stopping did not hang on the wait


def test_no_task_is_lost_or_run_twice_when_puts_race_the_waits(
    celery_apps: tuple[Callable[[], Celery], Ran, str], make_settings: Callable[..., Settings]
) -> None:
    make, ran, record = celery_apps
    app, queue, settings = make(), _queue(), make_settings()
    # Two pools on one queue: each wakes for the other's puts and acks too.
    workers = [_start_worker(app, queue, settings), _start_worker(make(), queue, settings)]
    senders, each = 8, 50
    before = replace(DELIVERABLE.wakes)

    def send(first: int) -> None:
        for n in range(first, first + each):
            app.send_task(record, args=[n], queue=queue)

    try:
        threads = [threading.Thread(target=send, args=(i * each,)) for i in range(senders)]
        for each_thread in threads:
            each_thread.start()
        for each_thread in threads:
            each_thread.join(WAIT_S)
        assert _until(lambda: sum(ran.values()) >= senders * each)
    finally:
        for worker, thread in workers:
            worker.stop(in_sighandler=False)
            thread.join(WAIT_S)
    assert ran == Counter(range(senders * each))
    assert _since(before).timeout == 0
