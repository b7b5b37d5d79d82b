"""End to end: N concurrent DICOM senders push a realistic mix of studies into a real
``aigw serve`` process for T seconds; how many studies a minute it carries, and how long
from the last instance received to the result.

The mix is fluorography-heavy, as a regional archive's day is: mostly one-image DX chest
studies, some mammography screening and some CT (chest, head), all synthetic studies of
:mod:`gateway.demo.synthetic` cloned under new UIDs so that each send is a new study. The
senders are DCMTK ``storescu -R`` processes (``TCP_NODELAY=1``, 128 KiB PDU) calling as a
configured source (``IRK_CAMI``, region 38, where every reference device is enabled), each
taking the next study from a shared queue until time is up.

Latency runs from the study's ``last_received_at`` (the index time of its last instance)
to the result: the outbox's ``delivered_at`` where the results/outbox pipeline filled it for
every result of the study, else the last of its jobs' ``finished_at``. The output says which
end was used. It includes the quiet period the gateway waits before it calls a study
complete (``AIGW_QUIET_PERIOD_S``, recorded).

Modules: ``mix`` (the studies and their sizes), ``senders`` (storescu threads), ``outcomes``
(what the gateway's database says of each study), ``run`` (the gateway process, the run,
its summary).
"""

from benchmarks.end_to_end.run import EndToEndPlan, run_end_to_end

__all__ = ["EndToEndPlan", "run_end_to_end"]
