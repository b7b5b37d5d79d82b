"""Ingest: DICOM in, until a study is complete.

Modules
-------
sources
    Who may send (calling AE, IP ranges) and from which region; ``sync_directory`` writes
    them into the index.
scp
    The DICOM SCP: association gatekeeping, C-ECHO, C-STORE handlers bound to their parts.
receive
    :class:`Ingest`: one instance durably into the object store and the index, or a status.
tags
    The attributes the index keeps, read once from a received dataset and validated.
assembly
    :class:`Assembler`: a study is complete after its quiet period, or on request; completion
    goes to one hook, the next stage's entry point.
"""
