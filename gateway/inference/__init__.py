"""Inference: one job through the device's model into findings.

Modules
-------
pipeline
    :func:`run_job`: load ▸ decode ▸ preprocess ▸ onnxruntime ▸ postprocess ▸ record.
decode
    Stored instances into pixels: every transfer syntax, modality LUT, slice order.
masks
    Segmentation masks kept in the object store for the SEG builder.
"""
