"""Results: from a finished job to the objects a radiologist and the regional system read.

The builders are pure functions of one :class:`~gateway.results.input.ReportInput`; only
:mod:`gateway.results.build` touches the database and the object store.

Modules
-------
input
    :class:`ReportInput`: what every builder is given.
build
    Gathers what the database holds of a job, has its objects built, records them and queues
    their delivery.
artifacts
    One job's objects: its sources read from the object store, every builder run, each object
    stored (what a results child runs).
build_pool
    The results children: the objects built off the worker's GIL, under a memory ceiling.
encoding
    The objects as part-10 bytes: pydicom's writer without its repeated passes.
header
    The one DICOM header policy of every result object: derived UIDs, series description,
    patient/study attributes mended, time stamps, the AI device as Contributing Equipment.
iod_lookup
    highdicom's attribute-in-IOD lookups cached (same answers, ~5 ms each saved).
notices
    What every result says: the AI notice, the device's РУ, its provenance.
marks
    The key images of a job and where each finding's mark goes on them.
windowing
    Grey levels: how a source image is shown by default.
sr
    The DICOM SR (TID 1500 measurement report).
flags
    The flag images: Secondary Capture with the marks and a Russian banner burned in.
gsps
    The marks as a presentation state over the original images.
seg
    DICOM SEG of a segmenting device's masks.
semd
    The SEMD protocol (HL7 CDA R2) and its validation against the official schematron.
"""
