"""The ``aigw serve`` process: builds every part from one settings object and runs them.

Start-up order matters: wait for the database and the object store (they may start after
this process), migrate the index, recover from an unclean stop, and only then accept
associations. The broker is not waited for: ingest needs none, and jobs recorded meanwhile
are sent when it appears. Extra SCP processes (``scp_processes`` > 1) accept on this
process's listening socket, the least loaded first (:mod:`gateway.ingest.balance`); study
assembly and HTTP (HTTPS with ``http_tls_cert_file``) run once, in this process, whose
``/metrics`` reports the DICOM edge's counters of every SCP process.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import uvicorn
from sqlalchemy.exc import IntegrityError

from gateway.access.audit import record_association
from gateway.access.http import https_options
from gateway.api import create_app
from gateway.external.receive import ResultReceiver
from gateway.index.database import Database
from gateway.index.due import Backoff
from gateway.index.object_store import ObjectStore, create_store
from gateway.index.recovery import recover
from gateway.ingest.assembly import Assembler, CompletionHook, log_completion
from gateway.ingest.balance import NOT_ACCEPTING, AcceptBalance, Seat
from gateway.ingest.expected import ExpectedCounts
from gateway.ingest.orthanc_follow import OrthancFollower
from gateway.ingest.receive import Ingest
from gateway.ingest.refusals import AssociationDecision, AuditHook, EdgeCounters
from gateway.ingest.release import ReleaseCompletion
from gateway.ingest.scp import DeviceResults, DicomServer
from gateway.ingest.sources import SourceDirectory, load_directory, sync_directory
from gateway.logs import configure_logging
from gateway.settings import Settings
from workers.dependencies import wait_for_database, wait_for_store

log = logging.getLogger(__name__)


@dataclass
class Parts:
    """Everything a gateway process needs, built from settings (tests build these too)."""

    settings: Settings
    db: Database
    store: ObjectStore
    directory: SourceDirectory
    source_ids: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings, *, migrate: bool = True) -> Parts:
        """Every part, once the database (migrated here with ``migrate``, else by the
        gateway) and the object store answer: waited for, in any start order."""
        directory = load_directory(settings.sources_file, settings.regions_file, settings.open_mode)
        db = Database(settings.resolved_database_url, pool_size=settings.max_associations + 4)
        backoff = retry_backoff(settings)
        wait_for_database(db, backoff, migrate=migrate)
        store = create_store(settings)
        wait_for_store(store, backoff)
        return cls(settings, db, store, directory, _synced(db, directory))


def _synced(db: Database, directory: SourceDirectory) -> dict[str, int]:
    """The configured regions and sources in the index. Processes started together (serve
    and its workers) insert the same rows at the same moment: the loser reads them."""
    for _ in range(3):
        try:
            return sync_directory(db, directory)
        except IntegrityError:
            continue
    return sync_directory(db, directory)


def retry_backoff(settings: Settings) -> Backoff:
    """The one backoff for work that met an unavailable dependency."""
    return Backoff(settings.retry_backoff_s, settings.retry_max_backoff_s)


class Service(Protocol):
    """Something that runs beside the SCP (the embedded worker, a delivery loop)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Gateway:
    """A running gateway: SCP(s), the assembler, HTTP, and any services given to it.

    ``before_accepting`` callables run after recovery and before the SCP accepts anything
    (e.g. queueing jobs that a crash left unqueued).
    """

    def __init__(
        self,
        parts: Parts,
        on_complete: CompletionHook = log_completion,
        services: Sequence[Service] = (),
        before_accepting: Sequence[Callable[[], object]] = (),
        device_results: DeviceResults | None = None,
    ) -> None:
        self.parts = parts
        self.device_results = device_results
        self.services = list(services)
        self.before_accepting = list(before_accepting)
        self.stop_event = threading.Event()
        self.assembler = build_assembler(parts, on_complete)
        self.scp: DicomServer | None = None
        self.edge_counters = EdgeCounters()
        self._children: list[multiprocessing.process.BaseProcess] = []
        self._threads: list[threading.Thread] = []
        self._http: uvicorn.Server | None = None

    def start(self) -> None:
        settings = self.parts.settings
        set_switch_interval()
        report = recover(self.parts.db, self.parts.store)
        log.info("recovery done", extra=report.__dict__)
        for service in self.services:
            service.start()
        for step in self.before_accepting:
            step()
        shared = settings.scp_processes > 1
        balance = AcceptBalance(settings.scp_processes) if shared else None
        self.scp = DicomServer(
            settings,
            Ingest(
                self.parts.db,
                self.parts.store,
                settings.ingest_commit_window_ms,
                keep_connection=True,
            ),
            self.parts.directory,
            self.parts.source_ids,
            self.parts.store,
            seat=balance.seat(0, settings.scp_balance_grace_ms / 1000) if balance else None,
            counters=self.edge_counters,
            audit=audit_associations(self.parts),
            releases=ReleaseCompletion(self.assembler.complete, self.assembler.wake),
            device_results=self.device_results,
        )
        if balance is not None:
            self._start_children(settings, balance, self.scp.listening_sockets())
        self.scp.start()
        self._thread(
            lambda: self.assembler.run(self.stop_event, settings.assembly_poll_s), "assembler"
        )
        for follower in self._orthanc_followers():
            self._thread(lambda f=follower: f.run(self.stop_event), "orthanc-follower")
        if settings.http_port:
            self._start_http(settings)

    def _orthanc_followers(self) -> list[OrthancFollower]:
        parts = self.parts
        return [
            OrthancFollower(
                parts.db,
                Ingest(parts.db, parts.store),
                source,
                parts.source_ids[source.name],
                self.assembler.complete,
                parts.settings.max_instance_bytes,
                wake=self.assembler.wake,
            )
            for source in parts.directory.all_sources()
            if source.orthanc is not None
        ]

    def _start_children(
        self, settings: Settings, balance: AcceptBalance, sockets: dict[str, socket.socket]
    ) -> None:
        context = multiprocessing.get_context("spawn")
        for number in range(1, settings.scp_processes):
            # The listening sockets travel as descriptors duplicated into the child.
            child = context.Process(
                target=run_scp_child,
                name=f"aigw-scp-{number}",
                args=(
                    settings.model_dump(mode="json"),
                    self.edge_counters,
                    sockets,
                    balance.seat(number, settings.scp_balance_grace_ms / 1000),
                ),
                daemon=True,
            )
            child.start()
            self._children.append(child)
        seats = {child.sentinel: number for number, child in enumerate(self._children, start=1)}
        self._thread(lambda: self._watch_children(balance, seats), "scp-children")

    def _watch_children(self, balance: AcceptBalance, seats: dict[int, int]) -> None:
        """A child that dies (killed, out of memory) keeps the load it last published: the
        others would leave every connection to it for the grace. Its seat is emptied here."""
        while seats and not self.stop_event.is_set():
            for sentinel in multiprocessing.connection.wait(list(seats), timeout=1.0):
                if self.stop_event.is_set():
                    return  # stop() ends the children: nothing to report
                number = seats.pop(cast(int, sentinel))
                balance.publish(number, NOT_ACCEPTING)
                log.error("SCP process ended", extra={"scp_process": number})

    def _start_http(self, settings: Settings) -> None:
        app = create_app(
            self.parts.db,
            self.parts.store,
            settings=settings,
            edge=self.edge_counters,
            device_results=self.device_results,
        )
        config = uvicorn.Config(
            app,
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
            **https_options(settings),
        )
        self._http = uvicorn.Server(config)
        self._thread(self._http.run, "http")

    def _thread(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def wait(self) -> None:
        """Block until SIGINT/SIGTERM, then stop cleanly."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: self.stop_event.set())
        self.stop_event.wait()
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        self.assembler.wake()
        if self._http:
            self._http.should_exit = True
        if self.scp:
            self.scp.stop()
        for child in self._children:
            child.terminate()
            child.join(timeout=10)
        for thread in self._threads:
            thread.join(timeout=10)
        for service in reversed(self.services):
            service.stop()
        self.parts.db.dispose()
        log.info("gateway stopped")


def build_assembler(parts: Parts, on_complete: CompletionHook = log_completion) -> Assembler:
    """The assembler with the sources' completion triggers: quiet periods, and expected
    counts from the archives of sources that name one (``query``)."""
    asks = any(source.query for source in parts.directory.all_sources())
    return Assembler(
        parts.db,
        parts.directory,
        parts.settings.quiet_period_s,
        on_complete,
        backoff=retry_backoff(parts.settings),
        expected=ExpectedCounts(parts.settings.ae_title) if asks else None,
    )


def device_results(parts: Parts) -> ResultReceiver:
    """The external devices' receive path, for an SCP process."""
    from workers.worker import report_context  # worker imports this module

    return ResultReceiver(report_context(parts))


def audit_associations(parts: Parts) -> AuditHook:
    """Every association decision of the edge, into the audit log."""

    def record(decision: AssociationDecision) -> None:
        record_association(parts.db, decision)

    return record


# The thread switch interval of an SCP process (CPython's default is 5 ms). Each association's
# threads (its DUL's and its own) and the group commit's leader take turns on the GIL at every
# system call; with 5 ms a thread back from a socket read or an fsync could wait that long
# while another ran Python, and the associations waited on each other. 0.5 ms won 7 of 12
# alternated pairs against 5 ms at four associations (0.93 and 0.90 against 0.83 and 0.83 ×
# Orthanc), 0.2 gained nothing more; later sets of the whole change did not show the gain
# again (benchmarks/README.md, eighth pass): it costs no CPU, and is kept for the waits.
SCP_SWITCH_INTERVAL_S = 0.0005


def set_switch_interval() -> None:
    """This SCP process's thread switch interval: :data:`SCP_SWITCH_INTERVAL_S`."""
    sys.setswitchinterval(SCP_SWITCH_INTERVAL_S)


def run_scp_child(
    settings_data: dict[str, Any],
    counters: EdgeCounters,
    sockets: dict[str, socket.socket],
    seat: Seat,
) -> None:
    """Entry point of an extra SCP process: ingest only, on the main process's listening
    socket(s), weighed against the others by ``seat``."""
    _die_with_parent()
    settings = Settings.model_validate(settings_data)
    configure_logging(settings.log_level, settings.log_json)
    set_switch_interval()
    parts = Parts.build(settings, migrate=False)
    server = DicomServer(
        settings,
        Ingest(parts.db, parts.store, settings.ingest_commit_window_ms, keep_connection=True),
        parts.directory,
        parts.source_ids,
        parts.store,
        adopt=sockets,
        seat=seat,
        counters=counters,
        audit=audit_associations(parts),
        # Completes in the index; the main process's assembler hands over on its next tick.
        releases=ReleaseCompletion(build_assembler(parts).complete),
        device_results=device_results(parts),
    )
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.stop).start())
    log.info("DICOM SCP process accepting", extra={"scp_process": seat.index})
    server.serve_forever()


def _die_with_parent() -> None:
    # After `kill -9` of the main process its SCP children must not go on accepting data
    # that no assembler will ever complete.
    PR_SET_PDEATHSIG = 1
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        log.warning("cannot tie SCP child to its parent (no prctl)")
