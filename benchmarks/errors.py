"""The one error of the benchmarks: a run that cannot give a trustworthy figure."""

from __future__ import annotations


class BenchmarkError(RuntimeError):
    """The run cannot give a trustworthy figure (lost instances, a failed job, a study that
    was not routed, a receiver that died…); no figure is reported."""
