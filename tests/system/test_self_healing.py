"""A gateway that heals itself, tried with real parts on one cluster (heal_cluster.py):
``aigw serve`` and two ``aigw worker`` processes started before PostgreSQL, Redis and the
S3 server answer (and before the schema exists); then, under load, PostgreSQL stopped with
``-m immediate`` and restarted, the S3 server (SeaweedFS) stopped and restarted with its
data, and Redis killed with SIGKILL and restarted without and with AOF. Each scenario
asserts: every acknowledged instance indexed with its object, every study delivered and
every job ended exactly once after the dependency returns, within the bound
(``RECOVERY_BOUND_S`` beyond the same work without a fault), no gateway process restarted,
health degraded during the outage and healthy after. The measured times are printed and
written up in docs/distributed-run.md."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from gateway.index.s3_store import S3Store
from tests.services import (
    ROOT,
    S3_CREDENTIALS,
    RedisServer,
    RegionalSystem,
    gateway_env,
    postgres_server,
    require_tool,
    s3_server,
    wait_for_port,
)
from tests.system.heal_cluster import (
    RECOVERY_BOUND_S,
    Archive,
    HealCluster,
    HealthWatch,
    Sent,
    fluorography,
    in_state,
    indexed_objects,
    job_endings,
    progress,
    routed_at,
    send_parallel,
    study_files,
    wait_delivered,
    wait_until,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not list((ROOT / "models" / "zoo").glob("*/manifest.yaml")),
        reason="the reference devices are not built: run `make models`",
    ),
]

OUTAGE_S = 5.0


def _destinations(work: Path, archive: Archive, regional: RegionalSystem) -> Path:
    path = work / "destinations.yaml"
    archive_destination = {"name": "archive", "protocol": "dicom", "host": "127.0.0.1",
                           "port": archive.port, "ae_title": "ARCHIVE"}  # fmt: skip
    path.write_text(
        yaml.safe_dump(
            {
                "destinations": [
                    archive_destination,
                    {
                        "name": "region",
                        "protocol": "http",
                        "url": f"http://127.0.0.1:{regional.port}/semd",
                    },
                ],
                "sources": {"irk-cami": ["archive", "region"]},
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HealCluster]:
    """Every gateway process is started first, its dependencies after (see the first test)."""
    require_tool("storescu")
    work = tmp_path_factory.mktemp("healing")
    with postgres_server() as pg, s3_server() as s3:
        pg.stop()  # the database exists, empty; nothing answers on its port
        s3.stop()
        redis = RedisServer()
        archive, regional = Archive(work / "archive"), RegionalSystem()
        archive.start(work / "storescp.log")
        regional.start()
        env = gateway_env(
            database_url=pg.url,
            object_store="s3",
            s3_endpoint=s3.endpoint,
            broker_url=redis.url,
            embedded_worker="false",
            devices_dir=str(ROOT / "models" / "zoo"),
            destinations_file=str(_destinations(work, archive, regional)),
            semd_file=str(ROOT / "gateway" / "configs" / "semd.yaml"),
            dicom_host="127.0.0.1",
            quiet_period_s="1",
            assembly_poll_s="0.2",
            outbox_poll_s="0.3",
            broker_visibility_timeout_s="30",
            min_free_bytes="0",
            worker_concurrency="1",
            log_level="INFO",
            **S3_CREDENTIALS,
        )
        (work / "gateway").mkdir()
        cluster = HealCluster(work, pg, redis, s3, archive, regional, env)
        try:
            _start_in_any_order(cluster)
            yield cluster
        finally:
            cluster.stop()
            redis.stop()
            regional.stop()
            archive.stop()
            print(json.dumps(cluster.observations, indent=1, default=str))


def _start_in_any_order(cluster: HealCluster) -> None:
    """Workers first, then serve; each dependency is started only once every process has
    said it waits for it: PostgreSQL (serve migrates it, the workers wait for the schema),
    then the S3 server, then Redis (only the workers wait for the broker)."""
    cluster.start_worker()
    cluster.start_worker()
    cluster.start_serve()
    everyone, workers = ("serve", "worker-1", "worker-2"), ("worker-1", "worker-2")
    _logged(cluster, everyone, "waiting for the database")
    alive_before = cluster.pids()
    started = time.monotonic()
    cluster.pg.start()
    _logged(cluster, everyone, "waiting for the object store")
    cluster.s3.start()
    _logged(cluster, workers, "waiting for the broker")
    cluster.redis.start()
    up = time.monotonic()
    wait_for_port(cluster.dicom_port, timeout_s=120, process=cluster.serve)
    _logged(cluster, workers, "ready.")  # Celery's "celery@host ready."
    cluster.observations["start"] = {
        "alive_while_waiting": len(alive_before),
        "dependencies_started_s": round(up - started, 1),
        "working_after_last_dependency_s": round(time.monotonic() - up, 1),
    }


def _logged(cluster: HealCluster, names: tuple[str, ...], text: str) -> None:
    for name in names:
        log = cluster.log(name)
        wait_until(
            lambda log=log: text in log.read_text(errors="replace"),  # type: ignore[misc]
            lambda log=log: f"{text!r} in {log.name}: {log.read_text(errors='replace')[-2000:]}",  # type: ignore[misc]
            timeout_s=120,
        )


def _waits(cluster: HealCluster, name: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in cluster.log_events(name):
        text = str(event.get("event", ""))
        if text.startswith(("waiting for the ", "the ")) and "dependency" in event:
            counts[text] = counts.get(text, 0) + 1
    return counts


def test_processes_started_before_their_dependencies_wait_and_then_work(
    cluster: HealCluster,
) -> None:
    assert cluster.observations["start"]["alive_while_waiting"] == 3  # none exited
    serve = _waits(cluster, "serve")
    assert serve["waiting for the database"] == 1  # one line per dependency, not per try
    assert serve["the database is there"] == 1
    assert serve["waiting for the object store"] == 1 and serve["the object store is there"] == 1
    for number in (1, 2):
        worker = _waits(cluster, f"worker-{number}")
        assert worker["waiting for the database"] == 1, worker
        assert worker.get("waiting for the database schema", 0) <= 1, worker  # serve migrates
        assert worker["waiting for the object store"] == 1, worker
        assert worker["waiting for the broker"] == 1 and worker["the broker is there"] == 1
    studies = [fluorography(300 + n) for n in range(6)]
    files = study_files(studies, cluster.work / "in" / "baseline")
    sent = send_parallel(cluster.dicom_port, files)
    assert len(sent.acknowledged) == len(files) and not sent.refused
    sent_at = time.monotonic()
    uids = [s.study_instance_uid for s in studies]
    wait_delivered(cluster.db, uids)
    # The same work without a fault: what recovery is measured against.
    cluster.observations["baseline_s"] = round(time.monotonic() - sent_at, 1)
    _assert_each_once(cluster, uids, sent)


def _assert_each_once(cluster: HealCluster, uids: list[str], *batches: Sent) -> None:
    """Every acknowledged instance indexed with its object; every job ended once, inferred;
    every result at its receiver exactly once."""
    acknowledged = [uid for sent in batches for uid in sent.acknowledged.values()]
    keys = indexed_objects(cluster.db, acknowledged)
    assert sorted(keys) == sorted(set(acknowledged))
    store = _store(cluster)
    assert all(store.exists(key) for key in keys.values())
    endings = job_endings(cluster.db, uids)
    assert endings and all(ends == ["inferred"] for ends in endings.values()), endings
    archive, posted = cluster.archive.received(), cluster.regional.keys()
    assert len(archive) == len(set(archive)), "a result reached the archive twice"
    assert len(posted) == len(set(posted)), "an SEMD was posted twice"


def _recovered(
    cluster: HealCluster, uids: list[str], outage: tuple[float, float, float], health: HealthWatch
) -> dict[str, object]:
    """After a dependency went away at ``down``, was being started again from ``restarting``
    and answered at ``back`` (``outage``): wait until everything is delivered and health is
    healthy again; assert the bounds, return what was measured."""
    down, restarting, back = outage
    wait_delivered(cluster.db, uids)
    settle_s = time.monotonic() - back
    wait_until(
        lambda: bool(health.seen) and health.seen[-1][1] == "healthy",
        lambda: f"health to recover: {health.seen[-3:]}",
        timeout_s=60,
    )
    healthy_s = min(
        (at - back for at, status, _ in health.seen if at > back and status == "healthy"),
        default=None,
    )
    during = health.between(down + 1.0, restarting)
    assert during and all(status == "degraded" for status, _ in during), [
        seen for seen in during if seen[0] != "degraded"
    ]
    baseline = float(cluster.observations["baseline_s"])
    assert settle_s <= baseline + RECOVERY_BOUND_S, (settle_s, baseline)
    return {
        "settled_after_return_s": round(settle_s, 1),
        "baseline_s": baseline,
        "healthy_after_return_s": None if healthy_s is None else round(healthy_s, 1),
        "degraded_reasons": sorted({r.split(":")[0] for _, reasons in during for r in reasons}),
        "attempts": sorted(
            a for p in (progress(cluster.db, uids) or {}).values() for a in p.attempts.values()
        ),
    }


def test_postgresql_stopped_under_load_loses_nothing_and_everything_moves_on(
    cluster: HealCluster,
) -> None:
    pids = cluster.pids()
    before = [fluorography(400 + n) for n in range(4)]
    during = [fluorography(410 + n) for n in range(2)]
    sent = send_parallel(cluster.dicom_port, study_files(before, cluster.work / "in" / "pg"))
    assert len(sent.acknowledged) == len(before) and not sent.refused
    uids = [s.study_instance_uid for s in before]
    with HealthWatch(cluster.health_url) as health:

        def analysing() -> bool:
            found = progress(cluster.db, uids) or {}
            return any(state != "queued" for p in found.values() for state in p.jobs.values())

        # The first job runs: the others meet the outage routed, queued, running, reporting.
        wait_until(analysing, lambda: f"a job to start: {progress(cluster.db, uids)}")
        caught = _snapshot(cluster, uids)
        down, since = time.monotonic(), time.time()
        cluster.pg.stop()
        refused = send_parallel(
            cluster.dicom_port, study_files(during, cluster.work / "in" / "pg-during")
        )
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))
        restarting = time.monotonic()
        cluster.pg.start()
        back, back_at = time.monotonic(), datetime.now(UTC)
        assert not refused.acknowledged
        assert refused.refused and all("OutOfResources" in s for s in refused.refused.values())
        complete_at_return = in_state(cluster.db, "complete")
        # The sender's retry after the outage.
        resent = send_parallel(cluster.dicom_port, sorted(refused.refused))
        assert len(resent.acknowledged) == len(refused.refused) and not resent.refused
        uids += [s.study_instance_uid for s in during]
        measured = _recovered(cluster, uids, (down, restarting, back), health)
    routed = routed_at(cluster.db, complete_at_return)
    late = {uid: (at - back_at).total_seconds() for uid, at in routed.items()}
    assert all(seconds <= RECOVERY_BOUND_S for seconds in late.values()), late
    _assert_each_once(cluster, uids, sent, resent)
    assert cluster.pids() == pids, "no gateway process restarted"
    cluster.observations["postgresql"] = {
        **measured,
        "caught_at_stop": caught,
        "refused_during_outage": len(refused.refused),
        "complete_at_return_routed_after_s": sorted(round(s, 1) for s in late.values()),
        "serve_warnings": cluster.warnings("serve", since),
        "worker_warnings": [cluster.warnings(f"worker-{n}", since) for n in (1, 2)],
    }


def test_the_object_store_stopped_under_load_leaves_no_orphan_and_everything_moves_on(
    cluster: HealCluster,
) -> None:
    pids = cluster.pids()
    before = [fluorography(450 + n) for n in range(4)]
    during = [fluorography(460 + n) for n in range(2)]
    sent = send_parallel(cluster.dicom_port, study_files(before, cluster.work / "in" / "s3"))
    assert len(sent.acknowledged) == len(before) and not sent.refused
    uids = [s.study_instance_uid for s in before]
    with HealthWatch(cluster.health_url) as health:

        def analysing() -> bool:
            found = progress(cluster.db, uids) or {}
            return any(state != "queued" for p in found.values() for state in p.jobs.values())

        wait_until(analysing, lambda: f"a job to start: {progress(cluster.db, uids)}")
        caught = _snapshot(cluster, uids)
        down, since = time.monotonic(), time.time()
        cluster.s3.stop()  # same ports and data when it starts again
        refused = send_parallel(
            cluster.dicom_port, study_files(during, cluster.work / "in" / "s3-during")
        )
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))
        restarting = time.monotonic()
        cluster.s3.start()  # returns once it answers
        back = time.monotonic()
        assert not refused.acknowledged
        assert refused.refused and all("OutOfResources" in s for s in refused.refused.values())
        resent = send_parallel(cluster.dicom_port, sorted(refused.refused))
        assert len(resent.acknowledged) == len(refused.refused) and not resent.refused
        uids += [s.study_instance_uid for s in during]
        measured = _recovered(cluster, uids, (down, restarting, back), health)
    _assert_each_once(cluster, uids, sent, resent)
    # No orphan: every object stored for these studies has its index row, and every row
    # its object (checked in _assert_each_once).
    store = _store(cluster)
    acknowledged = [*sent.acknowledged.values(), *resent.acknowledged.values()]
    indexed = set(indexed_objects(cluster.db, acknowledged).values())
    stored = {key for uid in uids for key in store.keys(f"studies/{uid}/")}
    assert stored == indexed
    assert cluster.pids() == pids, "no gateway process restarted"
    cluster.observations["object_store"] = {
        **measured,
        "caught_at_stop": caught,
        "refused_during_outage": len(refused.refused),
        "serve_warnings": cluster.warnings("serve", since),
        "worker_warnings": [cluster.warnings(f"worker-{n}", since) for n in (1, 2)],
    }


def _store(cluster: HealCluster) -> S3Store:
    access, secret = S3_CREDENTIALS["s3_access_key"], S3_CREDENTIALS["s3_secret_key"]
    return S3Store(cluster.s3.endpoint, access, secret, "aigw")


def _snapshot(cluster: HealCluster, uids: list[str]) -> dict[str, int]:
    """How many studies and jobs were in each state (what an outage now catches)."""
    counts: dict[str, int] = {}
    for found in (progress(cluster.db, uids) or {}).values():
        for key in [f"study {found.state}", *(f"job {state}" for state in found.jobs.values())]:
            counts[key] = counts.get(key, 0) + 1
        unreported = [
            j for j, state in found.jobs.items() if state == "inferred" and j not in found.reported
        ]
        if unreported:
            counts["job inferred, no results"] = counts.get("job inferred, no results", 0) + len(
                unreported
            )
        pending = sum(1 for state in found.outbox if state == "pending")
        if pending:
            counts["delivery pending"] = counts.get("delivery pending", 0) + pending
    return counts


def _redis_outage(cluster: HealCluster, seed: int, name: str) -> None:
    pids = cluster.pids()
    batch = [fluorography(seed + n) for n in range(4)]
    uids = [s.study_instance_uid for s in batch]
    cluster.pause_workers()  # saturated workers: the tasks wait in Redis
    try:
        sent = send_parallel(cluster.dicom_port, study_files(batch, cluster.work / "in" / name))
        assert len(sent.acknowledged) == len(batch) and not sent.refused

        def queued() -> bool:
            found = progress(cluster.db, uids)
            jobs = sum(len(p.jobs) for p in (found or {}).values())
            return jobs >= len(batch) and cluster.redis.waiting_messages() >= jobs

        wait_until(
            queued, lambda: f"the batch's tasks to wait in Redis: {progress(cluster.db, uids)}"
        )
        waiting = cluster.redis.waiting_messages()
        with HealthWatch(cluster.health_url) as health:
            down, since = time.monotonic(), time.time()
            cluster.redis.kill()
            cluster.resume_workers()
            time.sleep(OUTAGE_S)
            restarting = time.monotonic()
            cluster.redis.start()
            back = time.monotonic()
            measured = _recovered(cluster, uids, (down, restarting, back), health)
    finally:
        cluster.resume_workers()
    _assert_each_once(cluster, uids, sent)
    assert cluster.pids() == pids, "no gateway process restarted"
    cluster.observations[name] = {
        **measured,
        "messages_waiting_at_kill": waiting,
        "serve_warnings": cluster.warnings("serve", since),
        "worker_warnings": [cluster.warnings(f"worker-{n}", since) for n in (1, 2)],
    }


def test_redis_killed_without_persistence_its_lost_tasks_are_sent_again(
    cluster: HealCluster,
) -> None:
    assert cluster.redis.aof_dir is None
    _redis_outage(cluster, 500, "redis")


def test_redis_killed_with_aof_every_job_still_ends_once(cluster: HealCluster) -> None:
    cluster.redis.stop()  # an orderly restart into AOF mode; the workers reconnect
    cluster.redis.aof_dir = cluster.work / "redis"
    cluster.redis.aof_dir.mkdir()
    cluster.redis.start()
    _redis_outage(cluster, 600, "redis_aof")
