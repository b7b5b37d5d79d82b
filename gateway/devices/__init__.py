"""AI devices as the gateway knows them.

Modules
-------
registry
    :class:`DeviceRegistry`: validated manifests and ONNX files in the index and the object
    store, versions, enablement per version and per region.
endpoint
    An external device's service as a DICOM peer (address, AE titles, TLS); the C-ECHO
    asked of it at registration.
modes
    Shadow or live per (device version, region): the mode in force, where it comes from,
    setting it (audited by the caller in the same transaction).
"""
