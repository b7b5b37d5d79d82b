"""AI devices as the gateway knows them.

Modules
-------
registry
    :class:`DeviceRegistry`: validated manifests and ONNX files in the index and the object
    store, versions, enablement per version and per region.
"""
