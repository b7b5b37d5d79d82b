"""Jobs: one (series, device) analysis each, from a complete study to a queued task.

Modules
-------
states
    :class:`JobState`, transitions written on the study's timeline, queries for pending,
    stale and unreported jobs.
dispatch
    :class:`Dispatcher`, the completion hook: route the study, record its jobs, queue them.
task_queue
    The Celery app as the gateway sees it: tasks sent by name, payloads of ids only.
sweeper
    Finds jobs whose task message was lost and sends it again.
"""
