"""Ingest: DICOM in, until a study is complete.

Modules
-------
sources
    Who may send (calling AE, IP ranges) and from which region; ``sync_directory`` writes
    them into the index.
scp
    The DICOM SCP: association gatekeeping, C-ECHO, C-STORE handlers bound to their parts;
    plain TCP and TLS listeners.
connections
    Connections before they are associations: one selector thread accepts, caps connections
    per peer, completes TLS handshakes and reads the A-ASSOCIATE-RQ under a deadline.
balance
    SCP processes sharing one listening socket: the least loaded takes the next connection.
reactor
    pynetdicom's association and DUL loops woken by their messages instead of 1 ms polls.
dimse
    pynetdicom's DIMSE provider with the spooled file's meta and the C-STORE-RSP encoded
    directly (pydicom's general writer cost as much as parsing the instance), a C-STORE-RQ's
    command set decoded directly, and P-DATA-TF passed to DIMSE without the state machine.
spool
    A received dataset's spool file, its size, SHA-256 and head taken as it is written, so
    that ingest does not read the file back for them.
pdu_limits
    What one association may make the SCP hold: PDU lengths checked before their bodies are
    read, command and dataset sizes, unanswered requests.
tls
    The TLS listener's context (BCP 195) and the identity of a verified client certificate.
refusals
    Why the edge refused or aborted something: reasons, one log line each, counters shared
    by SCP processes, the association decision the audit log records (an accepted one's
    written on a thread of its own while the A-ASSOCIATE-AC goes out).
receive
    :class:`Ingest`: one instance durably into the object store and the index, or a status.
outcome
    :class:`Sender` (who sent an instance) and :class:`Outcome` (what became of it).
group_commit
    :class:`GroupCommit`: instances arriving together across associations share one write;
    each is answered only after it.
indexing
    :func:`write_group`: one index transaction (Core statements) for a group of staged
    instances, their objects published with one directory fsync per series.
pixels
    Pixel Data impossible on its face (cut short, native length not Rows × Columns × frames
    × samples × bytes, fewer fragments than frames), refused before it is stored.
header
    A received header walked straight from its bytes: the elements ingest reads and where
    the Pixel Data starts (pydicom reads what is not the plain case).
tags
    The attributes the index keeps, read once from a received dataset and validated.
assembly
    :class:`Assembler`: a study is complete after its quiet period, when its expected count
    is held, on release, or on request; completion goes to one hook, the next stage's entry
    point.
release
    :class:`ReleaseCompletion`: studies of ``complete_on_release`` sources complete when the
    association that delivered them is released (never on abort).
orthanc_follow
    :class:`OrthancFollower`: an Orthanc's StableStudy changes, fetched over REST into
    ingest and completed at once; the last change seen kept in the index.
expected
    :class:`ExpectedCounts`: the archive's NumberOfStudyRelatedInstances (C-FIND), cached
    per study; the quiet period when the archive does not answer.
"""
