"""External devices: AI devices that run as their vendors' services (``runtime: external``).

A job of such a device is sent, de-identified, to the vendor by C-STORE instead of running
the ONNX pipeline; it waits ``sent`` without holding a worker; the vendor's results come
back by C-STORE from a ``kind: device`` source, are checked, re-identified and go down the
same results path as our own (results rows, findings, outbox). A job whose vendor does not
answer within the manifest's ``deadline_s`` is failed by the job re-drive
(:func:`gateway.jobs.states.fail_overdue`).

Modules
-------
deidentify
    PS3.15 Annex E basic profile with the options an AI needs (dicognito), the UIDs it
    replaced written down; the check that nothing identifying is left.
pseudonyms
    The re-identification key in the index: seed per (study, device), every UID's
    pseudonym, the job that sent it.
send
    A job's series de-identified and sent by C-STORE (TLS optional); then ``sent`` until
    its deadline. Idempotent; a vendor that is away is retried like any dependency.
receive
    :class:`ResultReceiver`: a vendor's object checked (sender, SOP class, study, patient,
    references), re-identified, stored as the job's result, delivered; late ones kept.
tid1500
    The vendor's findings from its SR's TID 1500 measurement groups, as our ``Finding``.
"""
