"""Jobs: one (series, device) analysis each, from a complete study to a task on the broker.

Modules
-------
states
    :class:`JobState`, transitions written on the study's timeline, what is due (a task to
    send), a run handed back after a transient error.
dispatch
    :class:`Dispatcher`, the completion hook: route the study, record its jobs, due now.
task_queue
    The Celery app as the gateway sees it: tasks sent by name, payloads of ids only.
memory_broker
    The ``memory://`` transport of the embedded default, whose consumers sleep until a
    message can be delivered instead of polling.
broker
    :class:`BrokerWatch`: is the broker reachable, and is it still the same instance?
redrive
    :class:`JobRedrive`: claims due jobs and sends their infer or report task; after a
    broker outage or restart, everything whose message may be lost is due at once.
priors
    :class:`PriorFetch`: a job whose device wants priors gets the patient's earlier studies
    from the source's archive (C-FIND, then C-MOVE or C-GET), stored as priors.
"""
