"""The DICOMweb server (PS3.18) under ``/dicom-web``, beside the REST API and scoped like
it: STOW-RS in through the same durable ingest as C-STORE, QIDO-RS and WADO-RS out over
everything the gateway holds, its own results included. The API mounts
:func:`dicomweb_router`; this package comes before it and imports stages and ``access``.

Modules
-------
routes
    The operations and their OpenAPI documentation; ``dicomweb_router``.
stow
    STOW-RS: the sender from its token's source, parts spooled, each ingested, the Store
    Instances Response.
qido
    QIDO-RS: query keys parsed and matched, answers as the DICOM JSON Model.
qido_root
    QIDO-RS at the root: every series or instance of the region's matching studies.
wado
    WADO-RS: objects as stored (multipart/related) and their metadata.
catalog
    The index as DICOMweb sees it: studies, their current instances and stored results,
    inside the caller's region.
multipart
    multipart/related in (streamed to disk, bounded) and out (generated part by part).
media
    Accept negotiated; datasets encoded as DICOM JSON or Native DICOM Model XML.
"""

from gateway.dicomweb.routes import dicomweb_router

__all__ = ["dicomweb_router"]
