"""The index: what the gateway holds and in which state.

Modules
-------
database
    :class:`Database`: the engine, one transaction per ``session()``, migrations;
    :class:`KeptConnection`, one connection for a writer's transactions back to back.
prepared
    Core statements compiled once and run through the driver: the per-instance hot path.
tables
    The SQLAlchemy tables (Alembic migrations in ``migrations/`` create exactly these).
object_store
    Where instances and results are kept byte for byte: the interface, the folder backend.
s3_store
    :class:`S3Store`: the S3 backend (MinIO or any S3 server); a task's requests side by side.
side_by_side
    :class:`SideBySide`: the items of one call (an S3 store's PUTs or GETs) on a few threads,
    results in order, a failure raised once none of them is running.
read_ahead
    :class:`ReadAhead`: an answer's objects in order, the next few fetched together from S3
    within a byte budget (WADO-RS retrieve).
stored_headers
    Stored objects' headers (up to the Pixel Data) read from their first 64 KiB, the whole
    object only where that does not reach the pixels: WADO-RS metadata, results' attributes.
durable_files
    A staged file made durable (linked or copied, fsynced); data and directory fsyncs.
free_space
    :class:`FreeSpace`: a folder store's free space, read afresh before any refusal.
study_state
    :class:`StudyState` and the timeline every transition is written on.
due
    Work that is due: rows with a durable next attempt, claimed for one lease, the outcome
    recorded with a backoff (routing, task sends and deliveries all use it).
schema
    The database's Alembic revision against this code's: empty, older, current, unknown.
instances
    :func:`current_instance_keys`: a series' current instances, in one order for every reader.
read_model
    The read side the CLI, the API and the dashboard share: filtered studies with counts,
    one study in full, its timeline, jobs with findings, results.
patient_names
    Patient's Name folded for matching (QIDO-RS, the prior query's same-patient check).
recovery
    Crash recovery at start-up: objects without index rows, interrupted writes.
"""
