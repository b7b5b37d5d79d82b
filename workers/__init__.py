"""The composition root: where the gateway's stages and the Celery tasks meet.

Modules
-------
cli
    ``aigw``, the entry point: the gateway's commands plus ``serve``, ``worker``, ``demo``.
serve
    :class:`Parts` and :class:`Gateway`: the SCP(s), assembly and HTTP of ``aigw serve``.
app
    :func:`build_gateway`: the gateway with dispatch, the sweeper, the outbox dispatcher and,
    in the embedded default, a worker in the same process.
worker
    The embedded worker and ``aigw worker``.
tasks
    The Celery tasks: ``infer`` and ``report``.
demo
    ``make demo``: synthetic studies end to end on the embedded default.
"""
