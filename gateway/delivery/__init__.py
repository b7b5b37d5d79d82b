"""Delivery: results out, retried until each destination acknowledges.

Modules
-------
destinations
    Where results go (``configs/destinations.yaml``): C-STORE, Orthanc REST, STOW-RS, HTTP.
outbox
    One row per (result, destination), claimed, sent, and recorded; the dispatcher thread.
send
    :class:`Delivery`: one outbox row sent by its destination's protocol.
"""
