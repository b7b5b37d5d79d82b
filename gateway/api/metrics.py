"""Prometheus metrics, read from the index at scrape time, and the DICOM edge's refusals.

The index is the truth every process writes to (SCP children, workers on other machines),
so a collector that counts rows gives the same numbers whichever process is scraped; no
in-process counter could. The edge's counters are the exception: refusals leave no row, so
they live in memory shared by the SCP processes of one ``aigw serve`` (its own ``/metrics``
reports them). Each app gets its own registry: nothing global at import time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, or_, select

from gateway.api.backlog import Waiting, waiting
from gateway.delivery.outbox import OutboxState
from gateway.index.database import Database
from gateway.index.tables import InstanceRow, JobRow, OutboxRow, StudyRow
from gateway.ingest.refusals import EdgeCounters
from gateway.jobs.states import JobState
from gateway.settings_groups import StuckBounds

# Seconds; inference of one series runs from tens of milliseconds (CPU, 2D) to minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
INFERENCE_STAGES = ("decode", "preprocess", "infer", "postprocess")


class IndexCollector(Collector):
    def __init__(self, db: Database, bounds: StuckBounds) -> None:
        self.db = db
        self.bounds = bounds

    def collect(self) -> Iterator[Metric]:
        yield from self._counts()
        yield from _working(waiting(self.db, self.bounds))

    def _counts(self) -> Iterator[Metric]:
        with self.db.session() as session:
            instances = session.scalar(select(func.count(InstanceRow.id))) or 0
            by_state = session.execute(
                select(StudyRow.state, func.count(StudyRow.id)).group_by(StudyRow.state)
            ).all()
            queued = session.execute(
                select(JobRow.queue, func.count(JobRow.id))
                .where(JobRow.state == JobState.QUEUED.value)
                .group_by(JobRow.queue)
            ).all()
            timings = session.execute(
                select(JobRow.device_key, JobRow.timings_ms).where(
                    JobRow.state != JobState.FAILED.value
                )
            ).all()
            failures = session.execute(
                select(OutboxRow.destination, func.count(OutboxRow.id))
                .where(
                    or_(
                        OutboxRow.state == OutboxState.FAILED,
                        (OutboxRow.state == OutboxState.PENDING)
                        & (OutboxRow.last_error.is_not(None)),
                    )
                )
                .group_by(OutboxRow.destination)
            ).all()
        received = CounterMetricFamily(
            "aigw_instances_received", "DICOM instances stored and indexed (all versions)."
        )
        received.add_metric([], instances)
        yield received
        studies = GaugeMetricFamily("aigw_studies", "Studies by state.", labels=["state"])
        for state, count in by_state:
            studies.add_metric([state], count)
        yield studies
        depth = GaugeMetricFamily(
            "aigw_queue_depth", "Jobs queued and not yet started.", labels=["queue"]
        )
        for queue, count in queued:
            depth.add_metric([queue], count)
        yield depth
        yield _latency_histogram((device, values) for device, values in timings)
        failed = GaugeMetricFamily(
            "aigw_delivery_failures",
            "Deliveries whose last attempt failed (retrying or given up).",
            labels=["destination"],
        )
        for destination, count in failures:
            failed.add_metric([destination], count)
        yield failed


def _working(items: list[Waiting]) -> Iterator[Metric]:
    """Per working state: how many items wait, and how long the oldest has (0: none)."""
    count = GaugeMetricFamily(
        "aigw_working_items",
        "Items in each working state (work the gateway owes).",
        labels=["state"],
    )
    age = GaugeMetricFamily(
        "aigw_oldest_item_age_seconds",
        "Age of the oldest item in each working state; 0 when none waits.",
        labels=["state"],
    )
    bound = GaugeMetricFamily(
        "aigw_stuck_after_seconds",
        "The age beyond which an item of the state makes the gateway degraded.",
        labels=["state"],
    )
    for item in items:
        count.add_metric([item.state.value], item.count)
        age.add_metric([item.state.value], item.oldest_age_s or 0.0)
        bound.add_metric([item.state.value], item.bound_s)
    yield from (count, age, bound)


def _latency_histogram(rows: Iterable[tuple[str, dict[str, float] | None]]) -> Metric:
    """Per device: load excluded (storage, not the device), the rest summed."""
    per_device: dict[str, list[float]] = {}
    for device, timings in rows:
        if not timings:
            continue
        seconds = sum(float(timings.get(stage, 0.0)) for stage in INFERENCE_STAGES) / 1000
        per_device.setdefault(device, []).append(seconds)
    family = HistogramMetricFamily(
        "aigw_inference_latency_seconds",
        "Decode + preprocess + inference + postprocess per job, by device.",
        labels=["device"],
    )
    for device, values in sorted(per_device.items()):
        buckets = [(str(bound), sum(1 for v in values if v <= bound)) for bound in LATENCY_BUCKETS]
        buckets.append(("+Inf", len(values)))
        family.add_metric([device], buckets, sum(values))
    return family


class EdgeCollector(Collector):
    def __init__(self, counters: EdgeCounters) -> None:
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        accepted = CounterMetricFamily(
            "aigw_dicom_associations_accepted", "DICOM associations accepted."
        )
        accepted.add_metric([], self.counters.accepted_total())
        yield accepted
        refused = CounterMetricFamily(
            "aigw_dicom_refusals",
            "DICOM connections, associations and instances refused or aborted at the edge, "
            "by stage and reason.",
            labels=["stage", "reason"],
        )
        for reason, count in self.counters.refusals().items():
            refused.add_metric([reason.stage.value, reason.value], count)
        yield refused


def metrics_registry(
    db: Database, edge: EdgeCounters | None = None, bounds: StuckBounds | None = None
) -> CollectorRegistry:
    """``edge``: the DICOM SCP's counters when this app runs in the process that owns them;
    ``bounds``: the settings' stuck_after_s."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(IndexCollector(db, bounds or StuckBounds()))
    if edge is not None:
        registry.register(EdgeCollector(edge))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
