"""Inference: one job through the device's model into findings.

Modules
-------
pipeline
    :func:`run_job`: load ▸ decode ▸ preprocess ▸ onnxruntime ▸ postprocess ▸ record.
findings
    :class:`Finding` and its :class:`Location`: what inference records and results read.
decode
    Stored instances into pixels: every transfer syntax, modality LUT, the one slice order.
masks
    Segmentation masks kept in the object store for the SEG builder.
lease
    A running job's heartbeat: a second delivery of its task is skipped while it is fresh.
"""
