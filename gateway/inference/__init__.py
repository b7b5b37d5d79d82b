"""Inference: one job through the device's model into findings.

Modules
-------
pipeline
    :func:`run_job`: start ▸ load ▸ decode ▸ preprocess ▸ onnxruntime ▸ postprocess ▸
    record.
start
    A job claimed for its delivery and its instance keys read, in one write the group
    recorder commits with other jobs' starts and ends.
prepare
    Decode ▸ preprocess of one job as one unit of work: the model's inputs, not the pixels.
batcher
    One session per device per process, batches formed across jobs (max batch, max wait,
    urgent first), each job's outputs handed back to it.
record
    A job's findings and end state, committed with the other jobs ending (or starting) at
    that moment.
group_write
    One such group's writes as Core statements: its jobs locked in one statement, each write
    decided as alone, then executemany writes.
findings
    :class:`Finding` and its :class:`Location`: what inference records and results read.
pixel_checks
    Pixel Data against its dataset (frames, codestream headers, native length) and the
    pixel budget, before any decode.
codestreams
    JPEG / JPEG-LS SOF, JPEG 2000 / HTJ2K SIZ (raw or JP2) and RLE headers, read bounded.
decode_pool
    Load, checks, decode and preprocess in child processes (``decode_processes``, the cores)
    under ``RLIMIT_AS`` (``decode_memory_limit_mb``).
decode
    Stored instances into pixels: every transfer syntax, modality LUT, the one slice order.
native
    Plain native (little-endian, monochrome, 8/16-bit) Pixel Data read in place from the
    stored bytes, as pydicom's ``pixel_array`` would give it.
gpu_decode
    JPEG, JPEG lossless, JPEG 2000 and HTJ2K on the GPU (nvImageCodec) where it is there
    (``gpu.decode_backend``); the same arrays as the CPU decoders.
masks
    Segmentation masks kept in the object store for the SEG builder.
lease
    A running job's heartbeat: a second delivery of its task is skipped while it is fresh;
    one thread renews every job of a worker in one UPDATE a tick.
"""
