"""The composition root: where the gateway's stages and the Celery tasks meet.

Modules
-------
cli
    ``aigw``, the entry point: the gateway's commands plus ``serve``, ``worker``, ``demo``.
serve
    :class:`Parts` and :class:`Gateway`: the SCP(s), assembly and HTTP of ``aigw serve``.
app
    :func:`build_gateway`: the gateway with dispatch, the job re-drive, the outbox
    dispatcher and, in the embedded default, a worker in the same process.
dependencies
    Start in any order: the database (and its schema), the object store and the broker
    waited for with backoff, one log line each.
worker
    The embedded worker and ``aigw worker``.
tasks
    The Celery tasks: ``infer`` and ``report``.
demo
    ``make demo``: synthetic studies end to end on the embedded default.
"""
