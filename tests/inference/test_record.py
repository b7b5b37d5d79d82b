"""The record stage's group commit: jobs that end together share one transaction, a job
another run already finished is left alone, and one job whose write fails fails alone; jobs
that start share it too, each claimed as it would be alone."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import pytest

from gateway.index.instances import current_instance_keys
from gateway.inference.record import GroupRecorder, Outcome
from gateway.inference.start import Start, StartedJob
from tests.inference.test_inference_flow import (  # noqa: F401 (the fixtures)
    decode_memory_limit_mb,
    test_device_gateway,
)
from tests.inference.test_lease import _analysed_job, _job, _set_running
from workers.serve import Gateway


def test_a_group_is_one_transaction_and_a_failing_write_fails_alone(
    test_device_gateway: Gateway,  # noqa: F811
    tmp_path: Path,
) -> None:
    gateway = test_device_gateway
    running, broken, finished = (
        _analysed_job(gateway, tmp_path / str(seed), seed) for seed in (41, 42, 43)
    )
    _set_running(gateway, running.job_id, beat_age_s=1)
    _set_running(gateway, broken.job_id, beat_age_s=1)
    recorder = GroupRecorder(gateway.parts.db)
    try:
        group: list[tuple[Outcome, Future[bool]]] = [
            (Outcome(running.job_id, [], {"infer": 1.0}), Future()),
            (Outcome(broken.job_id, [], {"infer": object()}), Future()),  # type: ignore[dict-item]
            (Outcome(finished.job_id, [], {"infer": 2.0}), Future()),
        ]
        recorder._commit(group)  # as the recorder's thread commits what is waiting
    finally:
        recorder.close()
    assert group[0][1].result() is True
    with pytest.raises(Exception, match="StatementError"):
        group[1][1].result()
    assert group[2][1].result() is False  # already inferred: left as it was
    assert list(recorder.groups) == [3, 1, 1, 1]  # together, then one by one after the failure
    assert _job(gateway, running.job_id).state == "inferred"
    assert _job(gateway, running.job_id).timings_ms == {"infer": 1.0}
    assert _job(gateway, broken.job_id).state == "running"
    assert _job(gateway, finished.job_id).timings_ms != {"infer": 2.0}


def test_outcomes_recorded_from_many_threads_all_end_inferred(
    test_device_gateway: Gateway,  # noqa: F811
    tmp_path: Path,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    gateway = test_device_gateway
    jobs = [_analysed_job(gateway, tmp_path / str(seed), seed) for seed in (51, 52, 53, 54)]
    for job in jobs:
        _set_running(gateway, job.job_id, beat_age_s=1)
    recorder = GroupRecorder(gateway.parts.db)
    try:
        with ThreadPoolExecutor(len(jobs)) as pool:
            done = list(pool.map(lambda job: recorder.record(Outcome(job.job_id, [], {})), jobs))
        assert recorder._writer.held  # kept for the next group…
    finally:
        recorder.close()
    assert not recorder._writer.held  # …and given back when the recorder closes
    assert done == [True] * len(jobs)
    assert sum(recorder.groups) == len(jobs)
    assert {_job(gateway, job.job_id).state for job in jobs} == {"inferred"}


def test_starts_share_the_transaction_and_each_is_claimed_as_alone(
    test_device_gateway: Gateway,  # noqa: F811
    tmp_path: Path,
) -> None:
    gateway = test_device_gateway
    live, done, stale, ending = (
        _analysed_job(gateway, tmp_path / str(seed), seed) for seed in (61, 62, 63, 64)
    )
    _set_running(gateway, live.job_id, beat_age_s=1, runner="t1:0")
    _set_running(gateway, stale.job_id, beat_age_s=600, runner="t9:0")  # its worker died
    _set_running(gateway, ending.job_id, beat_age_s=1)
    attempts = _job(gateway, stale.job_id).attempts
    recorder = GroupRecorder(gateway.parts.db)
    try:
        group: list[tuple[Outcome | Start, Future[object]]] = [
            (Start(live.job_id, "t1:0", 30.0), Future()),  # a copy of the live delivery
            (Start(done.job_id, "t2:0", 30.0), Future()),
            (Start(stale.job_id, "t3:0", 30.0), Future()),
            (Outcome(ending.job_id, [], {"infer": 1.0}), Future()),
        ]
        recorder._commit(group)
    finally:
        recorder.close()
    assert list(recorder.groups) == [4]  # one transaction
    assert group[0][1].result() is None
    assert group[1][1].result() is None  # inferred already
    started = group[2][1].result()
    assert isinstance(started, StartedJob) and started.id == stale.job_id
    with gateway.parts.db.session() as session:
        assert list(started.keys) == current_instance_keys(session, started.series_uids)
    assert started.keys
    assert group[3][1].result() is True
    held, claimed = _job(gateway, live.job_id), _job(gateway, stale.job_id)
    assert (held.state, held.runner) == ("running", "t1:0")
    assert (claimed.state, claimed.runner, claimed.attempts) == ("running", "t3:0", attempts + 1)
    assert _job(gateway, done.job_id).state == "inferred"
    assert _job(gateway, ending.job_id).state == "inferred"


def test_announced_outcomes_share_a_transaction_and_a_withdrawn_one_holds_none(
    test_device_gateway: Gateway,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The jobs of one batch announce their outcomes as the batch returns: the first to
    record waits for the other (here up to a minute, so the test does not race), and one
    transaction records both; an announcement withdrawn (its postprocess failed) leaves
    nothing waiting."""
    import threading

    gateway = test_device_gateway
    first, second, third = (
        _analysed_job(gateway, tmp_path / str(seed), seed) for seed in (71, 72, 73)
    )
    for job in (first, second, third):
        _set_running(gateway, job.job_id, beat_age_s=1)
    recorder = GroupRecorder(gateway.parts.db, announced_wait_s=60.0)
    try:
        done: list[bool] = []
        with recorder.ending() as one, recorder.ending() as two:
            waiting = threading.Thread(
                target=lambda: done.append(one.record(Outcome(first.job_id, [], {})))
            )
            waiting.start()
            while not recorder._waiting:  # the first outcome is in, its group held
                waiting.join(timeout=0.01)
            assert not done and not recorder.groups
            done.append(two.record(Outcome(second.job_id, [], {})))
            waiting.join()
        assert done == [True, True]
        assert list(recorder.groups) == [2]  # one transaction for both
        with pytest.raises(ValueError, match="postprocess"), recorder.ending():
            raise ValueError("postprocess failed")
        assert recorder._announced == 0
        assert recorder.record(Outcome(third.job_id, [], {})) is True  # no wait for it
        assert list(recorder.groups) == [2, 1]
    finally:
        recorder.close()
    assert {_job(gateway, job.job_id).state for job in (first, second, third)} == {"inferred"}
