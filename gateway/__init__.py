"""The gateway: a small kernel and one package per pipeline stage.

Kernel (imported by every stage, imports none of them)
------------------------------------------------------
settings
    The one :class:`~gateway.settings.Settings` object, YAML overlaid by ``AIGW_*``.
settings_groups
    Its groups of settings: health bounds per working state, the GPU node's settings.
packaged
    The default configuration and reference devices shipped inside the packages.
errors
    The gateway's own exceptions; outside errors are translated into them at one boundary.
logs
    One JSON object per log line; never patient names, IDs or birth dates.
uids
    DICOM UID validation (UIDs become object keys and paths).
dimse_status
    Every DIMSE status the gateway answers.
pixel_data
    What a dataset declares about its pixels; the items of encapsulated Pixel Data.
memory
    glibc's malloc told to keep a radiograph's freed buffers for the next job.
child_pool
    Child processes from one fork server for the CPU-heavy stages (decode, results).

Stages, in the order a study meets them
----------------------------------------
index
    The database and its tables, the object store, the study's states and timeline, the
    read model the CLI and the API share.
ingest
    DICOM in: who may send, the SCP, durable storage of each instance, study assembly.
devices
    The AI device registry: manifests, ONNX files, versions, enablement per region.
routing
    Which devices get which series of a complete study, and why (pure).
jobs
    Job states, dispatch of a complete study into jobs, the task queue, the broker watch,
    the re-drive that sends every task that is due.
inference
    One job through decode, preprocess, onnxruntime and postprocess into findings.
results
    From a finished job to its result objects: SR, flag images, GSPS, SEG, SEMD.
delivery
    Results out: destinations, the outbox, the senders per protocol.
access
    Who may do what: tokens, roles, sessions, the HTTP caller, the audit log.
monitoring
    Devices watched in the field: radiologists' verdicts, figures and drift per device
    version and region, the usage report for Росздравнадзор, malfunction notices.
demo
    Synthetic phantom studies for the demo, the tests and the benchmarks.

The edge
--------
api
    The REST API, health and metrics; ``create_app`` mounts the dashboard and DICOMweb too.
dicomweb
    STOW-RS, QIDO-RS and WADO-RS (PS3.18), region-scoped like the API.
dashboard
    Server-rendered regional pages.
cli
    The ``aigw`` commands that need no running gateway.

Imports run one way: ``models``, ``pacs_adapters`` → kernel → stages → api, dashboard,
cli → ``workers`` (the composition root, which owns ``serve``, ``worker`` and ``demo``).
"""
