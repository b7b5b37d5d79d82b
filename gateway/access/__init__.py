"""Access: who may do what, and the record of what they did.

Modules
-------
tokens
    API tokens (sha256 only; ``aigw_<id>_<random>``), roles, region scope.
sessions
    Dashboard sessions kept in the index (idle and absolute limits), CSRF tokens of forms.
login
    Dashboard login: failures counted per account and per peer address, lockout, the
    session opened; every outcome audited in the same transaction.
http
    What every HTTP endpoint depends on: the app's parts, the caller, audited reads and
    changes.
audit
    The audit trail: reads of patient data, logins, token and device changes, the
    configuration loaded, DICOM associations at the edge; ``AuditEvent``, ``record``,
    ``query``, ``prune``.
retention
    ``AuditRetention``: old audit events, sessions and login failures deleted at start and
    hourly.
"""
