"""The results' objects built in child processes, off the worker's GIL.

A chest X-ray's SR, flag image, GSPS and SEMD are ~60 ms of CPU, nearly all of it Python
(pydicom's writer, highdicom, the drawing, lxml) that holds the GIL. Built on the worker's
own threads in ``aigw serve``, they held the GIL for more than half of what the process
ran while studies arrived (py-spy, 30 chest radiographs): the SCP's association, the
assembler and inference waited behind them. Here ``report_concurrency`` children each read
one job's sources from their own object store, build its objects and store them
(:func:`~gateway.results.artifacts.build_job`), and hand back only what the index records
of each (key, digest, size, or why it was withheld); the worker's thread records them.

Each child may grow by ``decode_memory_limit_mb`` past its imports (``RLIMIT_AS``), as the
decode children: the flag image decodes the source's pixels. A child that dies breaks only
the pool, which is replaced; that job's results are withheld with the reason, as a builder's
failure would be (nothing retried: a study that kills the builder would kill it again).
"""

from __future__ import annotations

from gateway.child_pool import ChildPool, child_store, limit_memory, picklable
from gateway.memory import few_arenas, keep_large_buffers
from gateway.results import iod_lookup
from gateway.results.artifacts import Artifact, BuildOptions, BuildRequest, build_job
from gateway.settings import Settings

_child: dict[str, object] = {}  # in a child: its settings and the builders' options


def _start_child(limit_bytes: int, settings: Settings, options: BuildOptions) -> None:
    keep_large_buffers()  # a radiograph's buffers reused job after job (gateway.memory)
    few_arenas()  # the builders run on this thread; an S3 store's GET threads share one arena
    iod_lookup.load_tables()  # as the child starts, not in its first job
    _child["settings"], _child["options"] = settings, options
    limit_memory(limit_bytes)


def _build_in_child(request: BuildRequest) -> list[Artifact]:
    settings, options = _child["settings"], _child["options"]
    assert isinstance(settings, Settings) and isinstance(options, BuildOptions)
    return build_job(request, child_store(settings), options)


class BuildPool:
    """``processes`` children building results, each limited to ``memory_limit_mb``;
    started on first use (or :meth:`warm`). Thread-safe."""

    def __init__(
        self, processes: int, memory_limit_mb: int, settings: Settings, options: BuildOptions
    ) -> None:
        self.memory_limit_mb = memory_limit_mb
        self._children = ChildPool(
            "results",
            processes,
            _start_child,
            (memory_limit_mb * 1024 * 1024, picklable(settings), options),
        )

    def build(self, request: BuildRequest) -> list[Artifact]:
        """The job's objects, built in a child. Raises what :func:`build_job` raises, and
        :class:`~gateway.child_pool.ChildDied` when the child died."""
        return self._children.run(_build_in_child, request)

    def warm(self) -> None:
        self._children.warm()

    def close(self) -> None:
        self._children.close()
