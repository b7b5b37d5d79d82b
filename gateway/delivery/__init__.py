"""Delivery: results out, retried until each destination acknowledges.

Modules
-------
destinations
    Where results go (``configs/destinations.yaml``): C-STORE, Orthanc REST, STOW-RS, HTTP;
    and where the monitoring notices go (HTTP, kind ``monitoring``).
outbox
    One row per (result or notice, destination), claimed, sent, and recorded; the
    dispatcher thread.
send
    :class:`Delivery`: one outbox row sent by its destination's protocol.
"""
