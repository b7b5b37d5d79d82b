"""Devices watched in the field: radiologists' verdicts on AI results (IHE AIRA), how each
device version does in each region (figures, drift), the monthly usage report for
Росздравнадзор and malfunction notices, sent through the outbox.

Modules
-------
verdicts
    ``Verdict`` (accept / modify / reject), recording one (one current per finding, the
    history kept, audited), the agreement rate.
aira
    What a radiologist's assessment object (SR or Key Object Selection) says: the results it
    references and the verdict, read by documented rules.
linking
    ``AssessmentLinker``: the completion hook that links assessment objects sent to the
    gateway as verdicts, and keeps them from starting a second analysis.
figures
    Per (device version, region) over a period: studies, positive rate, verdicts, failures
    by reason, turnaround p50/p95, drift.
drift
    The weekly positive rate against the band of the first weeks (a p-chart).
report
    The usage report's schema (``UsageReport``, one ``DeviceRecord`` per device version and
    month) and building it from the index.
exchange
    The one place that knows the exchange format of АИС Росздравнадзора: the document sent,
    the CSV, where each field comes from.
notices
    Usage reports and malfunction notices as outbox notices, once per (device version,
    month) or (device version, day).
sender
    ``MonitoringSender``: the thread of ``aigw serve`` that queues them.
"""
