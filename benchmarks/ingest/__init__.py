"""Ingest benchmark: DCMTK ``storescu`` pushes the same synthetic CT and DX files to several
DICOM receivers in turn, and the figures are compared side by side.

Receivers: DCMTK ``storescp`` (the reference: writes files, no fsync, no index), Orthanc
(fsync of every file and its SQLite index), and ``aigw serve`` as a separate process,
embedded (folder store + SQLite) and distributed (S3 on a SeaweedFS server + PostgreSQL),
each with one and with two SCP processes. aigw acknowledges a C-STORE only after the object
is durable and its index row committed, so its figures include both. Every service comes
from the test harness (:mod:`tests.services`).

Every sender and every DCMTK-based receiver runs with ``TCP_NODELAY=1`` in its
environment (Debian's DCMTK sets the socket option only then; without it every receiver
stalls ~45 ms per instance). All ends use a 128 KiB maximum PDU.

Each round starts every receiver on empty storage, sends a warm-up, then the CT and the DX
files, and counts what the receiver holds; a run that lost an instance stops with an error
instead of reporting a number. Rounds go round-robin over the receivers, and the figures are
the median round's, so a slow spell on a shared machine hits every receiver alike.

    .venv/bin/python -m benchmarks.ingest [--ct N] [--dx M] [--senders K] [--rounds R]
                                          [--receivers A,B] [--quick] [--out DIR]

Modules: ``corpus`` (the files), ``receivers`` (storescp, Orthanc, aigw), ``phases`` (one
timed phase, one round, the check that nothing was lost), ``report`` (ratios, table,
versions), ``cli`` (options, rounds, the JSON written).
"""

from benchmarks.ingest.cli import ALL_RECEIVERS, check_tools, main, parse_args, run

__all__ = ["ALL_RECEIVERS", "check_tools", "main", "parse_args", "run"]
