"""Access: who may do what, and the record of what they did.

Modules
-------
tokens
    API tokens (sha256 only), roles, region scope, signed dashboard sessions.
http
    What every HTTP endpoint depends on: the app's parts, the caller, audited reads.
audit
    The audit log of reads of patient-level data and of DICOM associations at the edge.
"""
