"""The ``aigw`` commands that need no running gateway (the entry point and ``serve``,
``worker``, ``demo`` live in :mod:`workers.cli`).

Modules
-------
app
    The ``aigw`` click group with every command below.
options
    ``--config`` / ``--data-dir`` and the one Settings object built from them.
init
    ``aigw init DIR``: an editable copy of the packaged configuration.
dicom
    ``aigw echo`` and ``aigw send``.
studies
    ``aigw studies`` (list, complete, timeline) and ``aigw jobs``.
models
    ``aigw models``: the device registry, and each version's shadow / live mode.
rules
    ``aigw rules``: test routing on files, check the rules file.
access
    ``aigw tokens`` and ``aigw api``.
audit
    ``aigw audit``: the audit trail, filtered.
results
    ``aigw results`` and ``aigw outbox``.
monitoring
    ``aigw monitoring``: the usage report (report, send) and the notices queued.
health
    ``aigw health``: healthy or degraded, and why (exit status 1 when degraded).
"""
