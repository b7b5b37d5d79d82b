"""Inference benchmark: per AI device, bare onnxruntime throughput against the whole worker
pipeline, on the same model, the same session and the same execution provider.

Per device, in one run:

- **bare**: the device's onnxruntime session, made by the worker's own
  :class:`models.runtime.SessionCache` (providers and options from settings), runs tensors
  that were preprocessed beforehand, back to back from one thread: at batch 1, at the batch
  the pipeline uses (the images of one job: one chest radiograph, four mammography views,
  one CT volume) and, for 2D devices, at the pipeline's maximum micro-batch.
- **pipeline**: synthetic studies are ingested into a real object store and SQLite index
  (the embedded default, built by :class:`workers.serve.Parts` on a temporary data folder)
  through :meth:`gateway.ingest.receive.Ingest.receive`, routed by the real rules
  (``configs/routing.yaml``), one job row per study, and run by
  :func:`gateway.inference.pipeline.run_job` on the context :func:`workers.worker.inference_context`
  builds: sequentially (each study once), and from a pool of ``worker_concurrency``
  threads as the worker runs them (the studies again as new jobs until
  ``--pipeline-seconds`` have passed, so that the threads' ramp weighs little). The
  per-stage breakdown is the jobs' own ``timings_ms``; what a job costs beyond its stages
  (database start and record, registry lookup) is ``bookkeeping``.
- **ratio**: pipeline images/s ÷ bare images/s at the pipeline's batch. The target for the
  2D devices on CPU is ≥ 0.7.

Bare, sequential and concurrent phases alternate in rounds so that a slow spell on a shared
machine hits all of them alike; the median round counts. Each phase also records the CPU
this process used and the CPU the rest of the machine used meanwhile.

    .venv/bin/python -m benchmarks.inference [--quick] [--device ID ...] [--devices-dir DIR]
        [--out DIR]

Modules: ``studies`` (the synthetic study per device, clones), ``gateway_parts`` (the
gateway on a temporary folder: ingest, route, job rows, bare inputs), ``vendor_scale`` (the
DenseNet-121 workload), ``runs`` (bare and pipeline runs, their figures), ``device`` (one
device's rounds), ``report`` (table, target, versions), ``cli`` (options, the JSON written).
"""

from benchmarks.environment import DEVICES_DIR
from benchmarks.inference.cli import device_plan, find_devices, main, parse_args, run
from benchmarks.inference.device import bench_device
from benchmarks.inference.report import environment
from benchmarks.inference.studies import clone
from benchmarks.inference.vendor_scale import REFERENCE_CXR, write_vendor_scale_device

__all__ = [
    "DEVICES_DIR",
    "REFERENCE_CXR",
    "bench_device",
    "clone",
    "device_plan",
    "environment",
    "find_devices",
    "main",
    "parse_args",
    "run",
    "write_vendor_scale_device",
]
